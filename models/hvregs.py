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
    :attr:`HV_REGS` names (``handle_mode`` is HV_CTRL's bit, 0 or 1), and ``grants``,
    ``table_gen`` (bumped by every write to the table, HV_CTRL or HV_DOMID)."""

    #: The device attribute each register of HV with state reads and a plain write stores.
    HV_REGS = Storage(HV, {
        "HV_CTRL": "handle_mode", "HV_DOMID": "domid", "HV_FAULT_STATUS": "fault_status",
        "HV_FAULT_CAUSE": "fault_cause", "HV_FAULT_ADDR_LO": "fault_addr",
        "HV_FAULT_ADDR_HI": "fault_addr", "HV_FAULT_COUNT": "fault_count",
        "HV_STAT_XLATE": "stat_xlate", "HV_STAT_REQUESTS": "stat_requests"})

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
        if index is not None:
            self.grants.write_word(index, value, strb)  # grant words honour wstrb
        elif name == "HV_FAULT_STATUS":
            self.fault_status &= ~value & 1  # RW1C
        elif hit and hit[0].access is Access.RW and name != "HV_SYNC":  # a barrier: no state
            self.HV_REGS.store(self, *hit, value)

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

