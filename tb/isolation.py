"""The isolation invariant, checked on every ``m_axi`` address handshake.

A shadow of the privileged registers is kept from the writes the bench makes on ``s_hv`` (the
only way the table, the IOTLB, the mode or the domain change). Per mode (``HV_CTRL`` bits 1:0):

* **grant (1)**: every transaction must lie in a page that some grant entry, at that moment,
  gives to the configured domain with the permission the direction needs (Xen
  ``grant_entry_v1``; ``docs/architecture.md``).
* **IOVA (2)**: the monitor sees only physical addresses, so the check is that the burst's
  ``[addr, addr + len)`` lies inside the *physical* range of one IOTLB mapping live at its
  address handshake, with the permission the direction needs (a read R, a write W). The shadow
  of the mappings follows docs/iotlb.md: the staging registers, then ``IOTLB_CMD`` 1 (insert,
  replacing every mapping it overlaps), 2 (invalidate the overlapping ones) and 3 (invalidate
  all). A mapping is live from its insert until an invalidation or an overlapping insert
  removes it. Evictions by the round-robin policy only make fewer mappings usable, so the
  shadow keeps evicted mappings as "possibly live": the check is an upper bound of what the
  IOTLB may hold (a removed mapping used is caught, an evicted one is not).
* **GPA (0)**: nothing is translated; the check is that a burst stays inside guest memory
  when the bench gave its size (``mem_bytes``), unless the bench declared that the case under
  way aims outside on purpose (``outside_ok``: a DECERR case).

In every mode a burst must not cross a 4 KiB page (AXI4, and the device's own rule).

A write is seen when its response arrives (``AxiLitePort.on_write``), after the device applied
it; a burst whose address went valid before a removal may still complete its handshake after
it (HV_SYNC waits for those, docs/iotlb.md "Invalidation is strict"). So a removed mapping
still covers handshakes for ``grace`` cycles after its removal was seen; the exact check (by
the cycle the address went valid) is the race bench's (``tb/test_adversarial.py``).
``clock`` gives the cycle of a removal (without it, the last handshake's cycle: earlier, so
stricter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

from models import spec

MODE_NAMES = {spec.MODE_GPA: "gpa", spec.MODE_GRANT: "grant", spec.MODE_IOVA: "iova"}
GRACE = 64  # cycles a removed mapping still covers a handshake (see the module docstring)


class Mapping(NamedTuple):
    """``[base, base + 2**size)`` -> ``[pa, pa + 2**size)`` with the device's R and W."""

    base: int
    size: int
    pa: int
    r: bool
    w: bool

    def covers_phys(self, addr: int, nbytes: int) -> bool:
        return self.pa <= addr and addr + nbytes <= self.pa + (1 << self.size)

    def permits(self, kind: str) -> bool:
        return self.w if kind == "W" else self.r

    def __str__(self) -> str:
        rw = ("R" if self.r else "-") + ("W" if self.w else "-")
        return f"{self.base:#x}/2^{self.size}->{self.pa:#x} {rw}"


def _overlaps(a: int, a_size: int, b: int, b_size: int) -> bool:
    """docs/iotlb.md: two ranges overlap when they agree on every bit above the larger size."""
    return ((a ^ b) & spec.ADDR_MASK) >> max(a_size, b_size) == 0


class IsolationChecker:
    def __init__(self, *, mem_bytes: int | None = None, grace: int = GRACE,
                 clock: Callable[[], int] | None = None) -> None:
        self.mode = spec.MODE_GPA
        self.domid = 0
        self.entries: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # ref -> [word0, word1]
        self.stage = {"iova": 0, "pa": 0, "attr": 0}
        self.mappings: list[Mapping] = []  # live or possibly live (evicted)
        self.retired: list[tuple[Mapping, int]] = []  # removed, with the cycle it was seen
        self.mem_bytes = mem_bytes
        self.outside_ok = False  # GPA: the case aims outside guest memory on purpose
        self.grace = grace
        self.clock = clock
        self.violations: list[str] = []
        self.checked = 0  # every handshake
        self.checked_by_mode: dict[str, int] = defaultdict(int)  # handshakes a check applied to
        self.late_uses = 0  # handshakes covered only by a mapping removed < grace cycles before
        self.outside_allowed = 0  # GPA handshakes outside memory in a case that aims there
        self._last_cycle = 0

    @property
    def handle_mode(self) -> bool:
        return self.mode == spec.MODE_GRANT

    def hw_reset(self) -> None:
        """The bench pulsed ``rst``: mode 0, the IOTLB and its staging registers cleared (the
        grant table survives in block RAM)."""
        self.mode = spec.MODE_GPA
        self.domid = 0
        self.stage = {"iova": 0, "pa": 0, "attr": 0}
        self._retire(self.mappings)
        self.mappings = []

    # -- shadow of s_hv writes --------------------------------------------------------------------
    def _now(self) -> int:
        return self.clock() if self.clock is not None else self._last_cycle

    def _retire(self, gone: list[Mapping]) -> None:
        now = self._now()
        self.retired = [(m, c) for m, c in self.retired if now - c <= self.grace]
        self.retired += [(m, now) for m in gone]

    def _remove_overlapping(self, base: int, size: int) -> None:
        gone = [m for m in self.mappings if _overlaps(m.base, m.size, base, size)]
        if gone:
            self.mappings = [m for m in self.mappings if m not in gone]
            self._retire(gone)

    def _command(self, cmd: int) -> None:
        size = self.stage["attr"] & spec.IOTLB_ATTR_SIZE_MASK
        if cmd == spec.IOTLB_CMD_INSERT:
            if not spec.IOTLB_MIN_SIZE <= size <= spec.IOTLB_MAX_SIZE:
                return
            align = ~((1 << size) - 1) & spec.ADDR_MASK
            base = self.stage["iova"] & align
            self._remove_overlapping(base, size)
            attr = self.stage["attr"]
            self.mappings.append(Mapping(base, size, self.stage["pa"] & align,
                                         bool(attr & spec.IOTLB_ATTR_READ),
                                         bool(attr & spec.IOTLB_ATTR_WRITE)))
        elif cmd == spec.IOTLB_CMD_INVALIDATE and size <= spec.IOTLB_MAX_SIZE:
            size = max(size, spec.IOTLB_MIN_SIZE)
            self._remove_overlapping(self.stage["iova"] & ~((1 << size) - 1) & spec.ADDR_MASK,
                                     size)
        elif cmd in (spec.IOTLB_CMD_INVALIDATE, spec.IOTLB_CMD_INVALIDATE_ALL):
            self._retire(self.mappings)
            self.mappings = []

    def hv_write(self, offset: int, value: int) -> None:
        if offset == spec.HV_CTRL:
            if value & spec.HV_CTRL_MODE_MASK != spec.HV_CTRL_MODE_MASK:  # 3: unchanged
                self.mode = value & spec.HV_CTRL_MODE_MASK
        elif offset == spec.HV_DOMID:
            self.domid = value & 0xFFFF
        elif offset >= spec.HV_GRANT_BASE:
            ref, word = divmod(offset - spec.HV_GRANT_BASE, spec.GRANT_ENTRY_BYTES)
            self.entries[ref][word // 4] = value
        elif offset in (spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_IOVA_HI, spec.HV_IOTLB_PA_LO,
                        spec.HV_IOTLB_PA_HI):
            key = "iova" if offset in (spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_IOVA_HI) else "pa"
            shift = 32 if offset in (spec.HV_IOTLB_IOVA_HI, spec.HV_IOTLB_PA_HI) else 0
            self.stage[key] = self.stage[key] & ~(0xFFFF_FFFF << shift) | value << shift
        elif offset == spec.HV_IOTLB_ATTR:
            self.stage["attr"] = value & 0x3FF
        elif offset == spec.HV_IOTLB_CMD:
            self._command(value)

    def permits(self, kind: str, addr: int) -> bool:
        frame = addr >> spec.PAGE_SHIFT
        for word0, word1 in self.entries.values():
            flags, domid = word0 & 0xFFFF, word0 >> 16
            if (word1 == frame and flags & spec.GTF_TYPE_MASK == spec.GTF_permit_access
                    and domid == self.domid
                    and (kind == "R" or not flags & spec.GTF_readonly)):
                return True
        return False

    def iova_permits(self, kind: str, addr: int, nbytes: int, cycle: int) -> bool:
        """A mapping live at the handshake (or removed less than ``grace`` cycles before)
        holds ``[addr, addr + nbytes)`` in its physical range, with the permission."""
        if any(m.covers_phys(addr, nbytes) and m.permits(kind) for m in self.mappings):
            return True
        if any(cycle - c <= self.grace and m.covers_phys(addr, nbytes) and m.permits(kind)
               for m, c in self.retired):
            self.late_uses += 1
            return True
        return False

    # -- called by the monitor --------------------------------------------------------------------
    def check(self, kind: str, addr: int, nbytes_max: int, cycle: int) -> None:
        self.checked += 1
        self._last_cycle = cycle
        nbytes = max(nbytes_max, 1)
        last = addr + nbytes - 1
        mode = self.mode
        if mode == spec.MODE_GPA and self.mem_bytes is None:
            return  # nothing known to check against (the foundation's behaviour)
        self.checked_by_mode[MODE_NAMES.get(mode, str(mode))] += 1
        rw = "read" if kind == "R" else "write"
        if last >> spec.PAGE_SHIFT != addr >> spec.PAGE_SHIFT:
            self.violations.append(f"cycle {cycle}: {kind} at {addr:#x} crosses a page")
        elif mode == spec.MODE_GRANT:
            if not self.permits(kind, addr):
                self.violations.append(
                    f"cycle {cycle}: {kind} at {addr:#x} (frame {addr >> spec.PAGE_SHIFT:#x}) "
                    f"not granted to domain {self.domid} for {rw}")
        elif mode == spec.MODE_IOVA:
            if not self.iova_permits(kind, addr, nbytes, cycle):
                self.violations.append(
                    f"cycle {cycle}: {kind} at {addr:#x}+{nbytes} not inside the physical range "
                    f"of a live IOTLB mapping with {rw} permission ({len(self.mappings)} "
                    f"mapping(s) live)")
        elif self.mem_bytes is not None and last >= self.mem_bytes:
            if self.outside_ok:
                self.outside_allowed += 1
            else:
                self.violations.append(f"cycle {cycle}: {kind} at {addr:#x}+{nbytes} outside "
                                       f"guest memory [0, {self.mem_bytes:#x})")

    # -- for tests --------------------------------------------------------------------------------
    def require_checked(self, mode: int | str, at_least: int = 1) -> None:
        """Fail unless at least ``at_least`` handshakes were checked in ``mode`` (0/1/2 or
        "gpa"/"grant"/"iova"): a test that meant to exercise a mode did."""
        name = MODE_NAMES.get(mode, mode) if isinstance(mode, int) else mode
        got = self.checked_by_mode.get(name, 0)
        if got < at_least:
            raise AssertionError(f"isolation: {got} handshake(s) checked in {name} mode, "
                                 f"expected at least {at_least} (checked per mode: "
                                 f"{dict(self.checked_by_mode)})")

    def summary(self) -> dict[str, int]:
        return {**self.checked_by_mode, "late_uses": self.late_uses,
                "outside_allowed": self.outside_allowed}
