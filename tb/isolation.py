"""The isolation invariant, checked on every ``m_axi`` address handshake.

A shadow of the privileged registers is kept from the writes the bench makes on ``s_hv`` (the
only way the table, the IOTLB, the mode or the domain change). Two strengths of check:

**Per page (the bench declared what the driver exposed, :meth:`IsolationChecker.expose`).**
The bench gives, before each notify, the device-address ranges the driver handed to the device
for that case (``verif.cases.case_ranges``): the three rings of its queue (with their event
words ``used_event`` and ``avail_event`` only when the case negotiates EVENT_IDX), every
descriptor's buffer, every indirect table and every buffer a table's entries name (the driver
grants or maps all of these). The checker splits
them into device pages (a grant reference's page, an IOVA page, a guest-physical frame), each
with the byte offsets exposed in it. A burst passes only if some exposed device page *maps to
the burst's physical page now*, with the permission the direction needs, and the burst's bytes
lie inside the offsets exposed in that page (its last beat rounded up to the bus width):

* **grant (HV_CTRL mode 1)**: the device page of handle ``h`` is reference ``ref(h)``; it maps
  to ``GRANT[ref].frame`` when ``ref`` is inside the table (``entries``) and the entry, as the
  shadow holds it at the handshake, is ``permit_access`` for the configured domain and, for a
  device write, not read-only (Xen ``grant_entry_v1``; ``docs/architecture.md``). A burst to a
  frame that another reference grants, or at an offset of the frame no buffer names, fails.
* **IOVA (2)**: the device page is an IOVA page; it maps through the shadow's one mapping live
  for it (or one removed less than ``grace`` cycles before, see below) to
  ``pa + (page - base)``, with R for a read and W for a write.
* **GPA (0)**: the device page is the frame itself (identity); in addition the burst stays
  inside guest memory (``mem_bytes``) unless the bench declared that the case under way aims
  outside on purpose (``outside_ok``: a DECERR case, counted as ``outside_allowed``).

**Any page (nothing declared, the benches of ``tests/test_sim.py``).** The former, weaker
check: grant mode, some entry grants the frame; IOVA mode, some live mapping's physical range
holds the burst; GPA mode, the burst lies inside ``mem_bytes`` when the bench gave it.

In every mode a burst must not cross a 4 KiB page (AXI4, and the device's own rule).

``checked`` counts every handshake the monitor reported, ``checked_page`` those checked per
page, ``checked_by_mode`` those any check applied to; :meth:`require_all_checked` fails a
bench unless it saw handshakes and checked every one of them per page.

IOVA shadow: the staging registers, then ``IOTLB_CMD`` 1 (insert, replacing every mapping it
overlaps), 2 (invalidate the overlapping ones) and 3 (invalidate all), as docs/iotlb.md states
them. Evictions by the round-robin policy only make fewer mappings usable, so the shadow keeps
evicted mappings as "possibly live": an upper bound of what the IOTLB may hold (a removed
mapping used is caught, an evicted one is not).

A write is seen when its response arrives (``AxiLitePort.on_write``), after the device applied
it; a burst whose address went valid before a removal may still complete its handshake after
it (HV_SYNC waits for those, docs/iotlb.md "Invalidation is strict"). So a removed IOVA mapping
still covers handshakes for ``grace`` cycles after its removal was seen; grant entries have no
grace (the shadow entry at the handshake). The exact check, by the cycle the address went
valid, is the race benches' (``tb/test_adversarial.py``). ``clock`` gives the cycle of a
removal (without it, the last handshake's cycle: earlier, so stricter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import NamedTuple

from models import spec

MODE_NAMES = {spec.MODE_GPA: "gpa", spec.MODE_GRANT: "grant", spec.MODE_IOVA: "iova"}
GRACE = 64  # cycles a removed mapping still covers a handshake (see the module docstring)
MAX_EXPOSED_PAGES = 256  # per range: more than guest memory; a longer buffer faults earlier
PAGE_MASK = spec.PAGE_SIZE - 1


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
                 clock: Callable[[], int] | None = None, entries: int | None = None,
                 lanes: int = 1) -> None:
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
        self.entries_limit = entries  # the table's size: GRANT[ref >= entries] never maps
        self.lanes = lanes  # bytes per beat: a burst's last beat may run to the lane boundary
        self.exposed: dict[int, list[tuple[int, int]]] | None = None  # device page -> offsets
        self.violations: list[str] = []
        self.checked = 0  # every handshake
        self.checked_page = 0  # handshakes checked per page against the exposed ranges
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

    # -- what the driver exposed -------------------------------------------------------------
    def expose(self, ranges: Iterable[tuple[int, int]] | None) -> None:
        """The device-address ranges ``(addr, nbytes)`` the driver handed to the device for the
        case under way (its rings and buffers); ``None``: nothing declared (the any-page
        check). Replaces what was exposed before."""
        if ranges is None:
            self.exposed = None
            return
        pages: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for addr, nbytes in ranges:
            pos = 0
            for _ in range(MAX_EXPOSED_PAGES):
                if pos >= nbytes:
                    break
                a = (addr + pos) & spec.ADDR_MASK
                off = a & PAGE_MASK
                size = min(spec.PAGE_SIZE - off, nbytes - pos)
                pages[a >> spec.PAGE_SHIFT].append((off, off + size))
                pos += size
        self.exposed = dict(pages)

    def _grant_frame(self, ref: int, kind: str) -> int | None:
        """The frame GRANT[ref] gives the configured domain for ``kind``, or None."""
        if self.entries_limit is not None and ref >= self.entries_limit:
            return None
        if ref not in self.entries:
            return None
        word0, word1 = self.entries[ref]
        flags, domid = word0 & 0xFFFF, word0 >> 16
        if (flags & spec.GTF_TYPE_MASK == spec.GTF_permit_access and domid == self.domid
                and (kind == "R" or not flags & spec.GTF_readonly)):
            return word1
        return None

    def _sources(self, kind: str, frame: int, cycle: int) -> list[tuple[int, bool]]:
        """The device pages that map to physical page ``frame`` for ``kind`` at the handshake,
        each with True when only through an IOVA mapping removed within the grace; in grant
        mode only the exposed ones, the only ones :meth:`_page_check` counts (it asks each
        exposed page for its frame: a case exposes a few pages, the table may hold thousands of
        entries). IOVA mode searches from the mappings."""
        if self.mode == spec.MODE_GRANT:
            assert self.exposed is not None
            handle = 1 << (63 - spec.PAGE_SHIFT)
            return [(dpage, False) for dpage in self.exposed
                    if dpage & handle and self._grant_frame(dpage ^ handle, kind) == frame]
        if self.mode == spec.MODE_IOVA:
            a = frame << spec.PAGE_SHIFT
            out = [((m.base + a - m.pa) >> spec.PAGE_SHIFT, False) for m in self.mappings
                   if m.covers_phys(a, spec.PAGE_SIZE) and m.permits(kind)]
            out += [((m.base + a - m.pa) >> spec.PAGE_SHIFT, True) for m, c in self.retired
                    if cycle - c <= self.grace and m.covers_phys(a, spec.PAGE_SIZE)
                    and m.permits(kind)]
            return out
        return [(frame, False)]

    def _page_check(self, kind: str, addr: int, nbytes: int, cycle: int) -> str | None:
        """None when an exposed device page maps to the burst's page with the permission and
        exposes its bytes; else why not."""
        assert self.exposed is not None
        frame, off = addr >> spec.PAGE_SHIFT, addr & PAGE_MASK
        end = off + nbytes
        mapped = False
        for dpage, late in sorted(self._sources(kind, frame, cycle), key=lambda x: x[1]):
            spans = self.exposed.get(dpage)
            if spans is None:
                continue
            mapped = True
            for lo, hi in spans:
                hi_beat = min(-(-hi // self.lanes) * self.lanes, spec.PAGE_SIZE)
                if lo <= off and end <= hi_beat:
                    self.late_uses += late
                    return None
        rw = "read" if kind == "R" else "write"
        if mapped:
            return (f"cycle {cycle}: {kind} at {addr:#x}+{nbytes} is in a page the case "
                    f"exposed, but outside the bytes exposed in it")
        return (f"cycle {cycle}: {kind} at {addr:#x}+{nbytes} (page {frame:#x}) is not the page "
                f"of any device page the case exposed, mapped {MODE_NAMES.get(self.mode)} for "
                f"{rw} now (exposed {self._describe_exposed()})")

    def _describe_exposed(self) -> str:
        assert self.exposed is not None
        return ", ".join(f"{p:#x}" for p in list(self.exposed)[:12]) + \
            (" ..." if len(self.exposed) > 12 else "")

    def permits(self, kind: str, addr: int) -> bool:
        frame = addr >> spec.PAGE_SHIFT
        for ref, (word0, word1) in self.entries.items():
            if self.entries_limit is not None and ref >= self.entries_limit:
                continue  # written past the table: the device keeps nothing
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
        if self.exposed is not None:
            self.checked_page += 1
            self.checked_by_mode[MODE_NAMES.get(mode, str(mode))] += 1
            if last >> spec.PAGE_SHIFT != addr >> spec.PAGE_SHIFT:
                self.violations.append(f"cycle {cycle}: {kind} at {addr:#x} crosses a page")
                return
            why = self._page_check(kind, addr, nbytes, cycle)
            if why is not None:
                self.violations.append(why)
            elif mode == spec.MODE_GPA and self.mem_bytes is not None and last >= self.mem_bytes:
                if self.outside_ok:
                    self.outside_allowed += 1
                else:
                    self.violations.append(f"cycle {cycle}: {kind} at {addr:#x}+{nbytes} "
                                           f"outside guest memory [0, {self.mem_bytes:#x})")
            return
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

    def require_all_checked(self, observed: int, *, per_page: bool = True) -> None:
        """Fail unless the monitor observed handshakes (``observed`` > 0), reported every one
        of them here, and each was checked per page against what the driver exposed
        (``per_page=False``: by some check, the any-page one included; for benches that expose
        nothing)."""
        if observed == 0:
            raise AssertionError("isolation: no address handshake observed, nothing checked")
        applied = self.checked_page if per_page else sum(self.checked_by_mode.values())
        if not observed == self.checked == applied:
            raise AssertionError(f"isolation: {observed} handshake(s) observed, {self.checked} "
                                 f"reported to the checker, {applied} checked "
                                 f"{'per page' if per_page else 'by any check'}")

    def summary(self) -> dict[str, int]:
        return {**self.checked_by_mode, "checked": self.checked,
                "checked_page": self.checked_page, "late_uses": self.late_uses,
                "outside_allowed": self.outside_allowed}
