"""The isolation invariant, checked on every ``m_axi`` address handshake.

A shadow of the privileged registers is kept from the writes the bench makes on ``s_hv`` (the
only way the table, the mode or the domain change). In handle mode every transaction must lie
in a page that some grant entry, at that moment, gives to the configured domain with the
permission the direction needs (Xen ``grant_entry_v1``; ``docs/architecture.md``).
"""

from __future__ import annotations

from collections import defaultdict

from models import spec


class IsolationChecker:
    def __init__(self) -> None:
        self.handle_mode = False
        self.domid = 0
        self.entries: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # ref -> [word0, word1]
        self.violations: list[str] = []
        self.checked = 0

    # -- shadow of s_hv writes --------------------------------------------------------------------
    def hv_write(self, offset: int, value: int) -> None:
        if offset == spec.HV_CTRL:
            self.handle_mode = bool(value & spec.HV_CTRL_HANDLE_MODE)
        elif offset == spec.HV_DOMID:
            self.domid = value & 0xFFFF
        elif offset >= spec.HV_GRANT_BASE:
            ref, word = divmod(offset - spec.HV_GRANT_BASE, spec.GRANT_ENTRY_BYTES)
            self.entries[ref][word // 4] = value

    def permits(self, kind: str, addr: int) -> bool:
        frame = addr >> spec.PAGE_SHIFT
        for word0, word1 in self.entries.values():
            flags, domid = word0 & 0xFFFF, word0 >> 16
            if (word1 == frame and flags & spec.GTF_TYPE_MASK == spec.GTF_permit_access
                    and domid == self.domid
                    and (kind == "R" or not flags & spec.GTF_readonly)):
                return True
        return False

    # -- called by the monitor --------------------------------------------------------------------
    def check(self, kind: str, addr: int, nbytes_max: int, cycle: int) -> None:
        self.checked += 1
        if not self.handle_mode:
            return
        last = addr + max(nbytes_max, 1) - 1
        if last >> spec.PAGE_SHIFT != addr >> spec.PAGE_SHIFT:
            self.violations.append(f"cycle {cycle}: {kind} at {addr:#x} crosses a page")
        elif not self.permits(kind, addr):
            self.violations.append(
                f"cycle {cycle}: {kind} at {addr:#x} (frame {addr >> spec.PAGE_SHIFT:#x}) not "
                f"granted to domain {self.domid} for {'read' if kind == 'R' else 'write'}")
