"""The reference model's virtio-mmio register file (``rtl/mmio.py``), and both ports.

The guest port ``s_axil``, map :data:`models.regmap.GUEST` (virtio 1.x section 4.2.2, one
queue): reads, resets and plain writes come from the map; the Status rules of section 3.1.1 and
the notify that starts the engine are written here, by register name.
"""

from __future__ import annotations

from collections.abc import Callable

from models import spec
from models.regmap import GUEST, Access, Storage


class RegisterPortModel:
    """A 32-bit register window (AXI4-Lite port) of the reference device.

    ``read``/``write`` are synchronous; ``read32``/``write32`` are the async
    :class:`sw.transport.RegisterPort` interface. Offsets are byte offsets; the two low bits
    are ignored (a word access covers the aligned word). Values are taken modulo 2**32.
    """

    def __init__(self, reader: Callable[[int], int], writer: Callable[[int, int, int], None],
                 name: str) -> None:
        self._reader, self._writer, self.name = reader, writer, name

    def _word(self, offset: int) -> int:
        if offset < 0:
            raise ValueError(f"{self.name}: negative register offset {offset!r}")
        return offset & ~3

    def read(self, offset: int) -> int:
        return self._reader(self._word(offset)) & 0xFFFF_FFFF

    def write(self, offset: int, value: int, strb: int = 0xF) -> None:
        self._writer(self._word(offset), value & 0xFFFF_FFFF, strb & 0xF)

    async def read32(self, offset: int) -> int:
        return self.read(offset)

    async def write32(self, offset: int, value: int) -> None:
        self.write(offset, value)

    def __repr__(self) -> str:
        return f"<RegisterPortModel {self.name}>"


class MmioRegisters:
    """The guest port's registers, a mixin of :class:`models.device.ReferenceDevice`; the state
    is on the device, in the attributes :attr:`GUEST_REGS` names. A QueueNotify runs the engine
    (``_run``)."""

    #: The device attribute each register of GUEST with state reads and a plain write stores.
    GUEST_REGS = Storage(GUEST, {
        "DeviceFeatures": "device_features", "DeviceFeaturesSel": "device_features_sel",
        "DriverFeatures": "driver_features", "DriverFeaturesSel": "driver_features_sel",
        "QueueSel": "queue_sel", "QueueNum": "queue_num", "QueueReady": "queue_ready",
        "InterruptStatus": "interrupt_status", "Status": "status",
        **{f"Queue{ring}{half}": f"queue_{ring.lower()}" for ring in ("Desc", "Driver", "Device")
           for half in ("Low", "High")}})

    @property
    def access_platform(self) -> bool:
        """ACCESS_PLATFORM is offered (and required): grant and IOVA modes (docs/iotlb.md)."""
        return self.mode in (spec.MODE_GRANT, spec.MODE_IOVA)

    @property
    def device_features(self) -> int:
        """64-bit device feature set: FLUSH, VERSION_1, the build's features
        (:class:`models.features.Features`), and ACCESS_PLATFORM in grant and IOVA modes."""
        return GUEST["DeviceFeatures"].value(self.params) | (
            self.access_platform << spec.VIRTIO_F_ACCESS_PLATFORM)

    def features_acceptable(self) -> bool:
        """FEATURES_OK may be set (virtio 1.x section 3.1.1 step 5/6): the driver's features are
        a subset of the device's, contain VERSION_1, and ACCESS_PLATFORM in grant and IOVA
        modes."""
        drv = self.driver_features
        return not drv & ~self.device_features and bool(drv >> spec.VIRTIO_F_VERSION_1 & 1) and (
            not (self.access_platform and not drv >> spec.VIRTIO_F_ACCESS_PLATFORM & 1))

    def _guest_read(self, offset: int) -> int:
        return self.GUEST_REGS.read(self, offset)

    def _guest_write(self, offset: int, value: int, strb: int) -> None:
        del strb  # wstrb is ignored on the guest port: every write is a full-word write
        hit = self.GUEST_REGS.locate(self, offset)
        keep = spec.STATUS_DEVICE_NEEDS_RESET
        match hit and hit[0].name:
            case "Status" if value == 0:  # section 4.2.2: writing 0 resets the device
                self._driver_reset()
            case "Status":  # the status byte (section 2.1); DEVICE_NEEDS_RESET is the device's
                self.status = value & 0xFF & ~keep | self.status & keep
                if not self.features_acceptable():  # section 3.1.1: FEATURES_OK is refused
                    self.status &= ~spec.STATUS_FEATURES_OK
            case "QueueNotify" if value == 0 and self.queue_ready and (
                    self.status & spec.STATUS_DRIVER_OK):
                if self._running:  # once more when the engine goes idle
                    self.pending_notify = True
                elif not self.halted:
                    self._run()
            case "InterruptACK":
                self.interrupt_status &= ~value
            case _ if hit and hit[0].access is Access.RW:
                self.GUEST_REGS.store(self, *hit, value)
