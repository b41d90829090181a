"""The reference model's virtio-mmio register file (``rtl/mmio.py``).

The guest port ``s_axil`` (virtio 1.x section 4.2.2, one queue): features, Status rules of
section 3.1.1, the notify that starts the engine; and :class:`RegisterPortModel`, both ports.
"""

from __future__ import annotations

from collections.abc import Callable

from models import spec

_U32 = 0xFFFF_FFFF


class RegisterPortModel:
    """A 32-bit register window (AXI4-Lite port) of the reference device.

    ``read``/``write`` are synchronous; ``read32``/``write32`` are the async
    :class:`sw.transport.RegisterPort` interface. Offsets are byte offsets; the two low bits
    are ignored (a word access covers the aligned word). Values are taken modulo 2**32.
    """

    def __init__(self, reader: Callable[[int], int], writer: Callable[[int, int, int], None],
                 name: str) -> None:
        self._reader = reader
        self._writer = writer
        self.name = name

    def read(self, offset: int) -> int:
        if offset < 0:
            raise ValueError(f"{self.name}: negative register offset {offset!r}")
        return self._reader(offset & ~3) & _U32

    def write(self, offset: int, value: int, strb: int = 0xF) -> None:
        if offset < 0:
            raise ValueError(f"{self.name}: negative register offset {offset!r}")
        self._writer(offset & ~3, value & _U32, strb & 0xF)

    async def read32(self, offset: int) -> int:
        return self.read(offset)

    async def write32(self, offset: int, value: int) -> None:
        self.write(offset, value)

    def __repr__(self) -> str:
        return f"<RegisterPortModel {self.name}>"



class MmioRegisters:
    """The guest port's decode, a mixin of :class:`models.device.ReferenceDevice`.

    State (on the device): ``status``, the feature words and selectors, ``queue_*``,
    ``interrupt_status``; a QueueNotify runs the engine (``_run``).
    """

    @property
    def device_features(self) -> int:
        """64-bit device feature set: FLUSH, VERSION_1, and ACCESS_PLATFORM in handle mode."""
        f = 1 << spec.VIRTIO_BLK_F_FLUSH | 1 << spec.VIRTIO_F_VERSION_1
        if self.handle_mode:
            f |= 1 << spec.VIRTIO_F_ACCESS_PLATFORM
        return f

    @property
    def driver_features_value(self) -> int:
        return self.driver_features[0] | self.driver_features[1] << 32

    def features_acceptable(self) -> bool:
        """FEATURES_OK may be set (virtio 1.x section 3.1.1 step 5/6): the driver's features are
        a subset of the device's, contain VERSION_1, and ACCESS_PLATFORM in handle mode."""
        drv = self.driver_features_value
        if drv & ~self.device_features:
            return False
        if not drv >> spec.VIRTIO_F_VERSION_1 & 1:
            return False
        return not (self.handle_mode and not drv >> spec.VIRTIO_F_ACCESS_PLATFORM & 1)

    _QUEUE_REGS = frozenset({
        spec.MMIO_QUEUE_NUM_MAX, spec.MMIO_QUEUE_NUM, spec.MMIO_QUEUE_READY,
        spec.MMIO_QUEUE_DESC_LOW, spec.MMIO_QUEUE_DESC_HIGH, spec.MMIO_QUEUE_DRIVER_LOW,
        spec.MMIO_QUEUE_DRIVER_HIGH, spec.MMIO_QUEUE_DEVICE_LOW, spec.MMIO_QUEUE_DEVICE_HIGH})

    def _guest_read(self, offset: int) -> int:
        if offset in self._QUEUE_REGS and self.queue_sel != 0:
            return 0
        match offset:
            case spec.MMIO_MAGIC_VALUE:
                return spec.MAGIC_VALUE
            case spec.MMIO_VERSION:
                return spec.MMIO_VERSION_VALUE
            case spec.MMIO_DEVICE_ID:
                return spec.VIRTIO_ID_BLOCK
            case spec.MMIO_VENDOR_ID:
                return spec.VENDOR_ID
            case spec.MMIO_DEVICE_FEATURES:
                sel = self.device_features_sel
                return self.device_features >> (32 * sel) & _U32 if sel < 2 else 0
            case spec.MMIO_DEVICE_FEATURES_SEL:
                return self.device_features_sel
            case spec.MMIO_DRIVER_FEATURES:
                sel = self.driver_features_sel
                return self.driver_features[sel] if sel < 2 else 0
            case spec.MMIO_DRIVER_FEATURES_SEL:
                return self.driver_features_sel
            case spec.MMIO_QUEUE_SEL:
                return self.queue_sel
            case spec.MMIO_QUEUE_NUM_MAX:
                return self.queue_num_max
            case spec.MMIO_QUEUE_NUM:
                return self.queue_num
            case spec.MMIO_QUEUE_READY:
                return self.queue_ready
            case spec.MMIO_INTERRUPT_STATUS:
                return self.interrupt_status
            case spec.MMIO_STATUS:
                return self.status
            case spec.MMIO_QUEUE_DESC_LOW:
                return self.queue_desc & _U32
            case spec.MMIO_QUEUE_DESC_HIGH:
                return self.queue_desc >> 32
            case spec.MMIO_QUEUE_DRIVER_LOW:
                return self.queue_driver & _U32
            case spec.MMIO_QUEUE_DRIVER_HIGH:
                return self.queue_driver >> 32
            case spec.MMIO_QUEUE_DEVICE_LOW:
                return self.queue_device & _U32
            case spec.MMIO_QUEUE_DEVICE_HIGH:
                return self.queue_device >> 32
            case spec.MMIO_CONFIG_GENERATION:
                return 0
            case 0x100:  # virtio_blk_config.capacity, low word (section 5.2.4)
                return (self.disk_bytes // spec.SECTOR_SIZE) & _U32
            case 0x104:  # capacity, high word
                return (self.disk_bytes // spec.SECTOR_SIZE) >> 32 & _U32
            case _:
                # QueueNotify and InterruptACK have no storage; everything else is unmapped.
                return 0

    @staticmethod
    def _set_lo(reg: int, value: int) -> int:
        return reg & ~_U32 | value

    @staticmethod
    def _set_hi(reg: int, value: int) -> int:
        return reg & _U32 | value << 32

    def _guest_write(self, offset: int, value: int, strb: int) -> None:
        # wstrb is ignored on the guest port: every write is a full-word write.
        del strb
        if offset in self._QUEUE_REGS and self.queue_sel != 0:
            return
        match offset:
            case spec.MMIO_DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            case spec.MMIO_DRIVER_FEATURES:
                if self.driver_features_sel < 2:
                    self.driver_features[self.driver_features_sel] = value
            case spec.MMIO_DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            case spec.MMIO_QUEUE_SEL:
                self.queue_sel = value
            case spec.MMIO_QUEUE_NUM:
                self.queue_num = value
            case spec.MMIO_QUEUE_READY:
                self.queue_ready = value & 1
            case spec.MMIO_QUEUE_NOTIFY:
                self._notify(value)
            case spec.MMIO_INTERRUPT_ACK:
                self.interrupt_status &= ~value
            case spec.MMIO_STATUS:
                self._write_status(value)
            case spec.MMIO_QUEUE_DESC_LOW:
                self.queue_desc = self._set_lo(self.queue_desc, value)
            case spec.MMIO_QUEUE_DESC_HIGH:
                self.queue_desc = self._set_hi(self.queue_desc, value)
            case spec.MMIO_QUEUE_DRIVER_LOW:
                self.queue_driver = self._set_lo(self.queue_driver, value)
            case spec.MMIO_QUEUE_DRIVER_HIGH:
                self.queue_driver = self._set_hi(self.queue_driver, value)
            case spec.MMIO_QUEUE_DEVICE_LOW:
                self.queue_device = self._set_lo(self.queue_device, value)
            case spec.MMIO_QUEUE_DEVICE_HIGH:
                self.queue_device = self._set_hi(self.queue_device, value)
            case _:
                pass  # read-only or unmapped

    def _write_status(self, value: int) -> None:
        """Status write (section 4.2.2): 0 resets the device; otherwise store the device status
        byte (bits 7:0, section 2.1), keeping DEVICE_NEEDS_RESET as the device has it and
        refusing FEATURES_OK (section 3.1.1)."""
        if value == 0:
            self._driver_reset()
            return
        value = value & 0xFF & ~spec.STATUS_DEVICE_NEEDS_RESET | (
            self.status & spec.STATUS_DEVICE_NEEDS_RESET
        )
        if value & spec.STATUS_FEATURES_OK and not self.features_acceptable():
            value &= ~spec.STATUS_FEATURES_OK
        self.status = value

    def _notify(self, value: int) -> None:
        """QueueNotify: value 0 with QueueReady and DRIVER_OK starts the engine."""
        if value != 0 or not self.queue_ready or not self.status & spec.STATUS_DRIVER_OK:
            return
        if self._running:
            self.pending_notify = True
            return
        if self.halted:
            return
        self._run()
