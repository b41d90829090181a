"""The reference model's privileged register file and fault latch (``rtl/hvregs.py``).

The hypervisor's port ``s_hv``: mode, domain, fault latch, statistics, grant table words; and
what a fault does (docs/architecture.md "Faults").
"""

from __future__ import annotations

from typing import NamedTuple

from models import spec

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = spec.ADDR_MASK


class Halt(Exception):
    """Unwinds the engine after a fault was recorded, or to stop it for a driver reset."""


class Fault(NamedTuple):
    """A fault the engine raised: ``cause`` (``spec.FAULT_*``) and 64-bit ``addr``."""

    cause: int
    addr: int



class HvRegisters:
    """The hypervisor port's decode and the fault latch, a mixin of
    :class:`models.device.ReferenceDevice`.

    State (on the device): ``handle_mode``, ``domid``, ``fault_*``, ``stat_*``, ``grants``,
    ``table_gen`` (bumped by every write to the table, HV_CTRL or HV_DOMID).
    """

    def _grant_word_index(self, offset: int) -> int | None:
        if offset < spec.HV_GRANT_BASE:
            return None
        index = (offset - spec.HV_GRANT_BASE) // 4
        return index if index < 2 * self.entries else None

    def _hv_read(self, offset: int) -> int:
        index = self._grant_word_index(offset)
        if index is not None:
            return self.grants.read_word(index)
        match offset:
            case spec.HV_VERSION:
                return spec.HV_VERSION_VALUE
            case spec.HV_CTRL:
                return spec.HV_CTRL_HANDLE_MODE if self.handle_mode else 0
            case spec.HV_DOMID:
                return self.domid
            case spec.HV_ENTRIES:
                return self.entries
            case spec.HV_FAULT_STATUS:
                return self.fault_status
            case spec.HV_FAULT_CAUSE:
                return self.fault_cause
            case spec.HV_FAULT_ADDR_LO:
                return self.fault_addr & _U32
            case spec.HV_FAULT_ADDR_HI:
                return self.fault_addr >> 32
            case spec.HV_FAULT_COUNT:
                return self.fault_count
            case spec.HV_SYNC:
                return 1  # the model completes every transaction before a register access
            # statistics after the fixed map (read-only, cleared by rst), as rtl/hvregs.py has
            case _ if offset == spec.HV_STAT_XLATE:
                return self.stat_xlate
            case _ if offset == spec.HV_STAT_REQUESTS:
                return self.stat_requests
            case _:
                return 0

    def _hv_write(self, offset: int, value: int, strb: int) -> None:
        index = self._grant_word_index(offset)
        if index is not None or offset in (spec.HV_CTRL, spec.HV_DOMID):
            self.table_gen += 1
        if index is not None:
            self.grants.write_word(index, value, strb)  # grant words honour wstrb
            return
        match offset:
            case spec.HV_CTRL:
                self.handle_mode = bool(value & spec.HV_CTRL_HANDLE_MODE)
            case spec.HV_DOMID:
                self.domid = value & _U16
            case spec.HV_FAULT_STATUS:
                self.fault_status &= ~value & 1  # RW1C
            case _:
                pass  # read-only or unmapped

    # ==========================================================================================
    # Faults
    # ==========================================================================================
    def _fault(self, cause: int, addr: int) -> Halt:
        """Record a fault (docs "Faults") and return the exception that halts the engine."""
        addr &= _U64
        self._werr = None  # a pending write error never surfaces once the engine has halted
        self.faults.append(Fault(cause, addr))
        self.fault_count = (self.fault_count + 1) & _U32
        if not self.fault_status & 1:
            self.fault_status = 1
            self.fault_cause = cause
            self.fault_addr = addr
        self.status |= spec.STATUS_DEVICE_NEEDS_RESET
        self.interrupt_status |= spec.INT_CONFIG_CHANGE
        self.halted = True
        return Halt()

