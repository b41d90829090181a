"""The world of a hostile stream: guest memory layout, grant table or IOMMU page table, and
what a case is.

A *stream* is a sequence of :class:`Case` objects over one fixed :class:`World`. A case is one
notify: the driver lays out zero or more chains, some well-formed and some hostile, and kicks
the device; :class:`Expect` is the outcome its category aims at.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from models import spec
from models.features import Features
from models.grant import GrantEntry

U64 = spec.ADDR_MASK
PAGE = spec.PAGE_SIZE

# Physical frames (4 KiB) of the default 256 KiB guest memory.
F_DESC, F_AVAIL, F_USED = 1, 2, 3  # the rings (one page each: fits QueueNumMax 256)
F_SLOT = (4, 5)  # request headers and status bytes
F_DATA = range(8, 40)  # data buffers
F_HOSTILE = range(40, 48)  # frames named by entries that must never be usable
F_QUARANTINE = range(48, 56)  # targets of remapped grants in the revocation tests
# Frame 0 and 56..63 are never named by any grant: "secret" guest memory.
MEM_BYTES = 64 * PAGE

# Grant references (handle mode).
R_DESC, R_AVAIL, R_USED = 0, 1, 2
R_SLOT = (3, 4)
R_DATA = range(8, 40)  # refs 8..39 -> the data frames, in a seeded shuffled order
R_HOSTILE = range(40, 48)
R_SPARE = range(48, 56)  # free references (remapping tests)
# Hostile entries: (flags, domid is ours, frame); what translating them must give.
HOSTILE_ENTRIES = {
    40: (spec.GTF_invalid, True, 40),  # cause 3
    41: (spec.GTF_accept_transfer, True, 41),  # cause 3
    42: (3, True, 42),  # cause 3 (type 3)
    43: (spec.GTF_readonly, True, 43),  # cause 3 (read-only without permit)
    44: (spec.GTF_permit_access, False, 44),  # cause 4
    45: (spec.GTF_permit_access | spec.GTF_readonly, False, 45),  # cause 4
    46: (spec.GTF_permit_access, True, 0xFFFF_F),  # translates, beyond memory: DECERR (6)
    47: (spec.GTF_invalid, False, 47),  # cause 3 beats 4
}
R_DECERR = 46
N_READONLY_DATA = 6  # data references granted read-only
N_WRITEONLY_DATA = 4  # IOVA mode: data references mapped write-only (a device read: cause 11)

# IOVA mode (docs/iotlb.md): "reference" r is the IOVA page IOVA_BASE + r (alias 0); data
# buffers also use aliases k = 1 .. IOVA_ALIASES - 1 at IOVA_BASE + k * IOVA_ALIAS_PAGES + r,
# mapped to the same frame, as Linux hands out a fresh IOVA for each map of the same page. All
# aliases of a page fall in the same IOTLB set, so a stream works on more pages than the IOTLB
# holds (eviction under pressure). The hostile references 40..47 and the spare ones are
# unmapped (cause 10 once the hypervisor fails the miss), except R_DECERR (beyond memory).
IOVA_BASE = 0xFFF0_0000  # below 4 GiB, as dma-iommu allocates
IOVA_ALIAS_PAGES = 67  # odd: the aliases of a page fall in other sets than its own
IOVA_ALIASES = 4


@dataclass(frozen=True)
class QueueSpec:
    """What the driver programs into the queue registers (addresses as the device sees them)."""

    n: int
    desc: int
    avail: int
    used: int


@dataclass
class World:
    """Layout of one stream: the device configuration, the mode and domain, the grant table the
    hypervisor programs, and where everything lives in guest physical memory."""

    seed: int
    handle_mode: bool = True
    iova: bool = False  # IOVA mode (HV_CTRL mode 2); handle_mode is then False
    domid: int = 7
    entries: int = spec.DEFAULT_ENTRIES
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX
    disk_bytes: int = spec.DEFAULT_DISK_BYTES
    data_width: int = spec.DEFAULT_DATA_WIDTH
    iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES  # IOVA mode
    mem_bytes: int = MEM_BYTES
    queue_size: int = 16  # the standard queue of the stream
    grants: dict[int, GrantEntry] = field(default_factory=dict)
    data_frame: dict[int, int] = field(default_factory=dict)  # ref -> frame (handle mode)
    readonly_refs: frozenset[int] = frozenset()
    writeonly_refs: frozenset[int] = frozenset()  # IOVA mode only
    iova_map: dict[int, tuple[int, bool, bool]] = field(default_factory=dict)  # page -> (f, r, w)
    # What the device build offers (docs/architecture.md "Features a build offers"): the
    # reference is built with it, and the RTL bench's must be the same build.
    features: Features = field(default_factory=Features)
    # Issue 17's ring features (INDIRECT_DESC, EVENT_IDX bits) the driver negotiates in a case
    # that does not say (``Case.features`` None), on top of VERSION_1 (and ACCESS_PLATFORM)
    negotiate: int = 0
    # feature bits the driver never negotiates, whatever a case asks (to run a stream around a
    # feature, e.g. a device bug under investigation)
    withhold: int = 0

    def __post_init__(self) -> None:
        if self.mem_bytes < MEM_BYTES:
            raise ValueError(f"mem_bytes must be at least {MEM_BYTES:#x}, not {self.mem_bytes!r}")
        if self.entries <= max(R_SPARE):
            raise ValueError(f"entries must exceed {max(R_SPARE)}, not {self.entries!r}")
        rng = random.Random(self.seed * 7919 + 1)
        frames = list(F_DATA)
        rng.shuffle(frames)
        self.data_frame = dict(zip(R_DATA, frames, strict=True))
        self.readonly_refs = frozenset(rng.sample(list(R_DATA), N_READONLY_DATA))
        g: dict[int, GrantEntry] = {}
        for ref, frame in ((R_DESC, F_DESC), (R_AVAIL, F_AVAIL), (R_USED, F_USED),
                           (R_SLOT[0], F_SLOT[0]), (R_SLOT[1], F_SLOT[1])):
            g[ref] = GrantEntry.permit(self.domid, frame)
        for ref, frame in self.data_frame.items():
            g[ref] = GrantEntry.permit(self.domid, frame, readonly=ref in self.readonly_refs)
        other = self.domid ^ 0x5A5A
        for ref, (flags, ours, frame) in HOSTILE_ENTRIES.items():
            g[ref] = GrantEntry(flags, self.domid if ours else other, frame)
        self.grants = g
        if self.iova:
            self.handle_mode = False
            rest = sorted(set(R_DATA) - self.readonly_refs)
            self.writeonly_refs = frozenset(rng.sample(rest, N_WRITEONLY_DATA))
            m: dict[int, tuple[int, bool, bool]] = {}
            for ref, frame in ((R_DESC, F_DESC), (R_AVAIL, F_AVAIL), (R_USED, F_USED),
                               (R_SLOT[0], F_SLOT[0]), (R_SLOT[1], F_SLOT[1])):
                m[self.iova_page(ref)] = (frame, True, True)
            for ref, frame in self.data_frame.items():
                perm = (True, ref not in self.readonly_refs and ref not in self.writeonly_refs)
                if ref in self.writeonly_refs:
                    perm = (False, True)
                for k in range(IOVA_ALIASES):
                    m[self.iova_page(ref, k)] = (frame, *perm)
            m[self.iova_page(R_DECERR)] = (HOSTILE_ENTRIES[R_DECERR][2], True, True)
            self.iova_map = m

    @property
    def mode(self) -> int:
        """HV_CTRL's mode: 0 GPA, 1 grant handles, 2 IOVA."""
        return spec.MODE_IOVA if self.iova else int(self.handle_mode)

    @property
    def translated(self) -> bool:
        """Device addresses are handles (grant or IOVA): buffers come from references."""
        return self.handle_mode or self.iova

    # --- IOVA mode -------------------------------------------------------------------------------
    @staticmethod
    def iova_page(ref: int, alias: int = 0) -> int:
        """The IOVA page number of ``ref`` under ``alias``."""
        return (IOVA_BASE >> spec.PAGE_SHIFT) + alias * IOVA_ALIAS_PAGES + ref

    def iova_addr(self, ref: int, offset: int, alias: int = 0) -> int:
        return (self.iova_page(ref, alias) << spec.PAGE_SHIFT) + offset

    def iommu_table(self):  # -> sw.iommu.IommuPageTable
        """A fresh copy of the guest's IOMMU page table (4 KiB mappings)."""
        from sw.iommu import IommuPageTable
        t = IommuPageTable()
        for page, (frame, r, w) in sorted(self.iova_map.items()):
            t.map(page << spec.PAGE_SHIFT, frame << spec.PAGE_SHIFT, read=r, write=w)
        return t

    # --- addresses -------------------------------------------------------------------------------
    def ring_ref_frame(self) -> tuple[tuple[int, int], ...]:
        return (R_DESC, F_DESC), (R_AVAIL, F_AVAIL), (R_USED, F_USED)

    def dma(self, ref: int, frame: int, offset: int) -> int:
        """The address the device is given for byte ``offset`` of ``ref`` (handle mode) or of
        ``frame`` (GPA mode)."""
        if self.handle_mode:
            return spec.make_handle(ref, offset)
        if self.iova:
            return self.iova_addr(ref, offset)
        return frame << spec.PAGE_SHIFT | offset

    def standard_queue(self, n: int | None = None, offsets: tuple[int, int, int] = (0, 0, 0)
                       ) -> QueueSpec:
        n = self.queue_size if n is None else n
        (rd, fd), (ra, fa), (ru, fu) = self.ring_ref_frame()
        return QueueSpec(n, self.dma(rd, fd, offsets[0]), self.dma(ra, fa, offsets[1]),
                         self.dma(ru, fu, offsets[2]))

    def phys(self, addr: int) -> int | None:
        """Physical address of device address ``addr`` under the world's own grants (None if
        it does not translate); used only to lay out memory contents."""
        if self.iova:
            hit = self.iova_map.get((addr & U64) >> spec.PAGE_SHIFT)
            return None if hit is None else hit[0] << spec.PAGE_SHIFT | addr & (PAGE - 1)
        if not self.handle_mode:
            return addr
        if not addr >> 63:
            return None
        ref, off = spec.split_handle(addr)
        e = self.grants.get(ref)
        if e is None or not e.permits_access or e.domid != self.domid:
            return None
        return e.frame << spec.PAGE_SHIFT | off

    def initial_memory(self) -> bytes:
        """Guest memory at the start of the stream: seeded noise everywhere (so that a read of
        the wrong place shows), rings zeroed."""
        mem = bytearray(random.Random(self.seed * 104729 + 3).randbytes(self.mem_bytes))
        for f in (F_DESC, F_AVAIL, F_USED):
            mem[f * PAGE:(f + 1) * PAGE] = bytes(PAGE)
        return bytes(mem)

    @property
    def capacity(self) -> int:
        return self.disk_bytes // spec.SECTOR_SIZE

    # --- features ------------------------------------------------------------------------------
    @property
    def offered(self) -> int:
        """The feature bits the device offers in the stream's mode."""
        bits = self.features.offered(self.queue_num_max)
        if self.translated:
            bits |= 1 << spec.VIRTIO_F_ACCESS_PLATFORM
        return bits

    def driver_features(self, extra: int | None) -> int:
        """What the driver writes to DriverFeatures for a case asking for ``extra`` (None:
        the stream's ``negotiate``): VERSION_1, ACCESS_PLATFORM in the translated modes, and
        the bits of ``extra`` the device offers (a driver negotiates nothing it is not
        offered)."""
        bits = 1 << spec.VIRTIO_F_VERSION_1
        if self.translated:
            bits |= 1 << spec.VIRTIO_F_ACCESS_PLATFORM
        return bits | ((self.negotiate if extra is None else extra) & self.offered
                       & ~self.withhold)

    def offers(self, bit: int) -> bool:
        return bool(self.offered >> bit & 1)

    @property
    def seg_max(self) -> int:
        """SEG_MAX's value (0: not offered)."""
        return self.features.seg_limit(self.queue_num_max)



@dataclass(frozen=True)
class Expect:
    """The outcome a category aims at. ``cause`` (a fault cause, or 0 for "no fault"); for
    ``cause == 0`` the statuses the chains may complete with (None: any)."""

    cause: int = 0
    statuses: tuple[int, ...] | None = None
    ignored_notify: bool = False  # the first notify must be ignored (no bus access)
    stalls: bool = False  # IOVA: the last chain stalls on a miss the driver's reset cancels
    # InterruptStatus bit 0 after the case (None: not predicted), from the specification
    # (EVENT_IDX: Linux's vring_need_event on a freshly reset device)
    interrupt: bool | None = None
    # bytes of the disk that must read as zeros after the case (DISCARD, WRITE_ZEROES)
    zeroed: tuple[int, int] | None = None
    fault_addr: int | None = None  # the fault address the cause comes with, when predicted


@dataclass
class Case:
    """One notify's worth of stimulus.

    ``descs`` are written to the descriptor table (index, addr, len, flags, next); ``heads`` go
    to consecutive avail ring slots from the driver's avail index, which then advances by
    ``avail_delta`` (default ``len(heads)``). ``writes`` are memory contents at physical
    addresses (headers, payloads). ``patches`` are grant entries written before the notify and
    restored after the case; ``errors`` are ``(kind, physical address)`` pages that answer with
    a bus error. ``notify`` is how the driver kicks: ``"ok"``, or a kick the device must ignore
    first (``"not_ready"``: QueueReady = 0, ``"bad_value"``: a queue index other than 0,
    ``"no_driver_ok"``: DRIVER_OK clear), after which the driver fixes it and kicks again.
    """

    index: int
    category: str
    expect: Expect
    queue: QueueSpec
    descs: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    avail_delta: int | None = None
    avail_flags: int = 0
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    patches: list[tuple[int, GrantEntry]] = field(default_factory=list)
    errors: list[tuple[str, int]] = field(default_factory=list)
    notify: str = "ok"
    note: str = ""
    # IOVA mode: page-table changes before the notify (IOVA page -> (frame, r, w) or None:
    # unmapped), each followed by an invalidation of the page and HV_SYNC, undone after the
    # case; ``flush``: invalidate the whole IOTLB before the notify (so the case misses);
    # ``policies``: how the hypervisor answers a miss on an IOVA page (sw.iommu.MissPolicy;
    # NEVER without a timeout: the driver resets the device while the miss is pending), and
    # ``policy`` for every other miss.
    iova_patches: list[tuple[int, tuple[int, bool, bool] | None]] = field(default_factory=list)
    flush: bool = False
    policies: dict[int, Any] = field(default_factory=dict)
    policy: Any = None
    # Issue 17: ``features``, the INDIRECT_DESC / EVENT_IDX bits the driver negotiates for
    # this case (None: the world's ``negotiate``); ``tables``, the indirect descriptor tables
    # the case lays out (device address, entries (index, addr, len, flags, next) as written;
    # their bytes are in ``writes``); ``fresh``: reset and bring the device up before the
    # case (its used index and EVENT_IDX state start from 0); ``used_event``: the value the
    # driver writes at the avail ring's used_event (EVENT_IDX) before the notify.
    features: int | None = None
    tables: list[tuple[int, list[tuple[int, int, int, int, int]]]] = field(
        default_factory=list)
    fresh: bool = False
    used_event: int | None = None

    def describe(self) -> str:
        return f"case {self.index} [{self.category}] {self.note}".rstrip()

