"""The reference model's privileged register file (``rtl/hvregs.py``), map
:data:`models.regmap.HV`, and what a fault does (docs/architecture.md "Faults")."""

from __future__ import annotations

from typing import NamedTuple

from models import spec
from models.regmap import HV, Access, Storage


class Halt(Exception):
    """Unwinds the engine after a fault was recorded, or to stop it for a driver reset."""


class Fault(NamedTuple):
    """A fault the engine raised: ``cause`` (``spec.FAULT_*``) and 64-bit ``addr``."""

    cause: int
    addr: int


class HvRegisters:
    """The hypervisor port's registers and the fault latch, a mixin of
    :class:`models.device.ReferenceDevice`; the state is on the device, in the attributes
    :attr:`HV_REGS` names (``mode`` is HV_CTRL's bits 1:0: ``spec.MODE_GPA``, ``MODE_GRANT``
    or ``MODE_IOVA``), and ``grants``, ``table_gen`` (bumped by every write to the table,
    HV_CTRL or HV_DOMID), ``iotlb`` (:class:`models.iotlb.Iotlb`), ``iotlb_gen`` (bumped by
    every IOTLB command and HV_CTRL write) and the pending miss's resolution
    (``_miss_resolve``, docs/iotlb.md)."""

    #: The device attribute each register of HV with state reads and a plain write stores.
    HV_REGS = Storage(HV, {
        "HV_CTRL": "mode", "HV_DOMID": "domid", "HV_FAULT_STATUS": "fault_status",
        "HV_FAULT_CAUSE": "fault_cause", "HV_FAULT_ADDR_LO": "fault_addr",
        "HV_FAULT_ADDR_HI": "fault_addr", "HV_FAULT_COUNT": "fault_count",
        "HV_STAT_XLATE": "stat_xlate", "HV_STAT_REQUESTS": "stat_requests",
        "IOTLB_IOVA_LO": "iotlb_iova", "IOTLB_IOVA_HI": "iotlb_iova",
        "IOTLB_PA_LO": "iotlb_pa", "IOTLB_PA_HI": "iotlb_pa", "IOTLB_ATTR": "iotlb_attr",
        "IOTLB_MISS": "iotlb_miss", "MISS_IOVA_LO": "miss_iova", "MISS_IOVA_HI": "miss_iova",
        "STAT_IOTLB_HITS": "stat_iotlb_hits", "STAT_IOTLB_MISSES": "stat_iotlb_misses",
        "STAT_IOTLB_INVALIDATED": "stat_iotlb_invalidated"})

    @property
    def handle_mode(self) -> bool:
        """Grant mode (HV_CTRL mode 1); False in GPA and in IOVA mode."""
        return self.mode == spec.MODE_GRANT

    @property
    def hv_irq(self) -> bool:
        """The hypervisor's interrupt line: high while an IOTLB miss is pending."""
        return bool(self.iotlb_miss & spec.IOTLB_MISS_PENDING)

    def _grant_word(self, offset: int) -> int | None:
        """The index of the grant table word (array GRANT[ref]) at ``offset``, if it is one."""
        index = (offset - HV["GRANT[ref]"].offset) // 4
        return index if 0 <= index < 2 * self.entries else None

    def _hv_read(self, offset: int) -> int:
        # HV_SYNC reads its reset value, 1: the model completes every transaction at once.
        index = self._grant_word(offset)
        return self.HV_REGS.read(self, offset) if index is None else self.grants.read_word(index)

    def _hv_write(self, offset: int, value: int, strb: int) -> None:
        index, hit = self._grant_word(offset), self.HV_REGS.locate(self, offset)
        name = hit and hit[0].name
        if index is not None or name in ("HV_CTRL", "HV_DOMID"):
            self.table_gen += 1
        if name == "HV_CTRL":
            self.iotlb_gen += 1
        if index is not None:
            self.grants.write_word(index, value, strb)  # grant words honour wstrb
        elif name == "HV_FAULT_STATUS":
            self.fault_status &= ~value & 1  # RW1C
        elif name == "HV_CTRL" and value & spec.HV_CTRL_MODE_MASK == spec.HV_CTRL_MODE_MASK:
            pass  # a write of mode 3 leaves the mode unchanged (docs/iotlb.md)
        elif name == "IOTLB_CMD":
            self._iotlb_command(value)
        elif name == "MISS_RESOLVE":
            if self.iotlb_miss & spec.IOTLB_MISS_PENDING and value in (
                    spec.MISS_RESOLVE_RETRY, spec.MISS_RESOLVE_FAIL):
                self.iotlb_miss, self._miss_resolve = 0, value
        elif hit and hit[0].access is Access.RW and name != "HV_SYNC":  # a barrier: no state
            self.HV_REGS.store(self, *hit, value)

    def _iotlb_command(self, cmd: int) -> None:
        """``IOTLB_CMD`` (docs/iotlb.md): the staging registers as they are now. Every command
        (1 to 3) makes the answers the DMA engine holds stale: it looks its page up again."""
        size = self.iotlb_attr & spec.IOTLB_ATTR_SIZE_MASK
        if cmd == spec.IOTLB_CMD_INSERT:
            self.iotlb.insert(self.iotlb_iova, self.iotlb_pa, size,
                              bool(self.iotlb_attr & spec.IOTLB_ATTR_READ),
                              bool(self.iotlb_attr & spec.IOTLB_ATTR_WRITE))
        elif cmd == spec.IOTLB_CMD_INVALIDATE:
            self._count_invalidated(self.iotlb.invalidate(self.iotlb_iova, size))
        elif cmd == spec.IOTLB_CMD_INVALIDATE_ALL:
            self._count_invalidated(self.iotlb.invalidate_all())
        else:
            return  # other values do nothing
        self.iotlb_gen += 1

    def _count_invalidated(self, removed: int) -> None:
        self.stat_iotlb_invalidated = (self.stat_iotlb_invalidated + removed) & 0xFFFF_FFFF

    def _fault(self, cause: int, addr: int) -> Halt:
        """Record a fault (docs "Faults") and return the exception that halts the engine."""
        addr &= spec.ADDR_MASK
        self._werr = None  # a pending write error never surfaces once the engine has halted
        self.faults.append(Fault(cause, addr))
        self.fault_count = (self.fault_count + 1) & 0xFFFF_FFFF
        if not self.fault_status & 1:
            self.fault_status, self.fault_cause, self.fault_addr = 1, cause, addr
        self.status |= spec.STATUS_DEVICE_NEEDS_RESET
        self.interrupt_status |= spec.INT_CONFIG_CHANGE
        self.halted = True
        return Halt()

