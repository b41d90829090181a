"""Hostile request streams for the isolation tests (issue 4), with the reference model as oracle.

A *stream* is a sequence of :class:`Case` objects over one fixed :class:`World` (guest memory
layout and grant table). A case is one notify: the driver lays out zero or more chains, some
well-formed and some hostile, and kicks the device; the reference model
(:class:`OracleDevice`) says what must happen: which chains complete with which status, or which
fault (cause and address) stops the device, and how many bus transactions, beats and table
lookups that takes, from which :func:`cycle_bound` derives the "no hang" bound for the RTL.

The same generator is driven by hypothesis (:class:`DrawChooser`, pure-Python tests) and by
seeded :class:`random.Random` streams (:class:`RandomChooser`, RTL co-simulation and the soak):
one vocabulary, two sources of randomness.

:class:`StreamDriver` applies a case to anything with the :class:`sw.transport.DeviceLink`
shape (register ports, guest memory) plus an ``errors`` set of failing bus pages, so the same
code lays out the case in the reference model's memory and in the RTL bench's. It is
deliberately not ``sw.driver``: a hostile driver writes raw descriptors, ring indices and queue
registers that the real driver never would.

Every category of the issue has a generator (see :data:`CATEGORIES`); each states the outcome it
aims at (:class:`Expect`) and the tests check that the reference agrees, so that a generator
that silently stopped producing its hostile input, or a reference that silently stopped
rejecting it, is caught.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from models import spec
from models.bus import Transaction
from models.device import ReferenceDevice
from models.grant import GrantEntry
from models.memory import BusErrorPages, GuestMemory

U64 = spec.ADDR_MASK
PAGE = spec.PAGE_SIZE

# =================================================================================================
# Randomness: one generator, two sources
# =================================================================================================


class Chooser(Protocol):
    """Where the generator takes its decisions from."""

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` (both included)."""
        ...

    def choice(self, seq: Sequence[Any]) -> Any: ...

    def bool(self, p: float = 0.5) -> bool:
        """True with probability about ``p``."""
        ...

    def seed(self) -> int:
        """A 32-bit seed for bulk data (payload bytes)."""
        ...


class RandomChooser:
    """Decisions from a seeded :class:`random.Random` (RTL streams, soak, seeded loops)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def bool(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def seed(self) -> int:
        return self.rng.getrandbits(32)


class DrawChooser:
    """Decisions drawn from hypothesis (``draw`` of ``st.data()`` or ``@st.composite``), so that
    failing streams shrink."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self._draw = draw
        self._st = st

    def int(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self._draw(self._st.integers(0, len(seq) - 1))]

    def bool(self, p: float = 0.5) -> bool:
        # shrinks towards False for rare events (p < 0.5), towards True otherwise
        k = self._draw(self._st.integers(0, 99))
        return k < round(100 * p) if p >= 0.5 else k >= 100 - round(100 * p)

    def seed(self) -> int:
        return self._draw(self._st.integers(0, 2**32 - 1))


# =================================================================================================
# The world: guest memory layout and grant table of one stream
# =================================================================================================

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
    domid: int = 7
    entries: int = spec.DEFAULT_ENTRIES
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX
    disk_bytes: int = spec.DEFAULT_DISK_BYTES
    data_width: int = spec.DEFAULT_DATA_WIDTH
    mem_bytes: int = MEM_BYTES
    queue_size: int = 16  # the standard queue of the stream
    grants: dict[int, GrantEntry] = field(default_factory=dict)
    data_frame: dict[int, int] = field(default_factory=dict)  # ref -> frame (handle mode)
    readonly_refs: frozenset[int] = frozenset()

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

    # --- addresses -------------------------------------------------------------------------------
    def ring_ref_frame(self) -> tuple[tuple[int, int], ...]:
        return (R_DESC, F_DESC), (R_AVAIL, F_AVAIL), (R_USED, F_USED)

    def dma(self, ref: int, frame: int, offset: int) -> int:
        """The address the device is given for byte ``offset`` of ``ref`` (handle mode) or of
        ``frame`` (GPA mode)."""
        if self.handle_mode:
            return spec.make_handle(ref, offset)
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


# =================================================================================================
# Cases
# =================================================================================================


@dataclass(frozen=True)
class Expect:
    """The outcome a category aims at. ``cause`` (a fault cause, or 0 for "no fault"); for
    ``cause == 0`` the statuses the chains may complete with (None: any)."""

    cause: int = 0
    statuses: tuple[int, ...] | None = None
    ignored_notify: bool = False  # the first notify must be ignored (no bus access)


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

    def describe(self) -> str:
        return f"case {self.index} [{self.category}] {self.note}".rstrip()


@dataclass
class Seg:
    """One descriptor before indices are assigned: ``addr``, ``len``, device-writable."""

    addr: int
    len: int
    write: bool
    flags: int = 0  # extra flag bits (INDIRECT)


class _CaseBuilder:
    """Allocates buffers inside the world for one case and collects its memory writes."""

    def __init__(self, ch: Chooser, w: World) -> None:
        self.ch = ch
        self.w = w
        self.writes: list[tuple[int, bytes]] = []
        self.free_refs = list(R_DATA)
        self.free_frames = list(F_DATA)  # GPA mode: contiguous runs
        self.slot_next = 0
        self.slot_perm = list(range(2 * (PAGE // 64)))
        random.Random(ch.seed()).shuffle(self.slot_perm)

    # --- memory ----------------------------------------------------------------------------------
    def put(self, addr: int, data: bytes) -> None:
        """Write ``data`` at device address ``addr`` (page by page through the world)."""
        pos = 0
        while pos < len(data):
            a = (addr + pos) & U64
            size = min(PAGE - (a & (PAGE - 1)), len(data) - pos)
            p = self.w.phys(a)
            if p is not None and p + size <= self.w.mem_bytes:
                self.writes.append((p, data[pos:pos + size]))
            pos += size

    def payload(self, n: int) -> bytes:
        return random.Random(self.ch.seed()).randbytes(n)

    # --- allocation ------------------------------------------------------------------------------
    def slot(self) -> int:
        """Device address of a fresh 64-byte slot in the header/status pages (room for a
        16-byte header at a random offset plus status bytes)."""
        k = self.slot_perm[self.slot_next % len(self.slot_perm)]
        self.slot_next += 1
        page, idx = divmod(k, PAGE // 64)
        off = idx * 64 + self.ch.int(0, 31)
        return self.w.dma(R_SLOT[page], F_SLOT[page], off)

    def buffer(self, nbytes: int, *, writable: bool) -> int:
        """Device address of a fresh data buffer of ``nbytes``: it may start anywhere in a page
        and continue into the next reference (handle mode, as Linux allocates consecutive
        references) or the next frame (GPA mode)."""
        ch, w = self.ch, self.w
        for _ in range(16):
            off = ch.int(0, PAGE - 1) if ch.bool(0.6) else ch.int(0, 8) * 64
            pages = max(1, -(-(off + nbytes) // PAGE))
            if w.handle_mode:
                starts = [r for r in self.free_refs
                          if all(r + k in self.free_refs
                                 and (not writable or r + k not in w.readonly_refs)
                                 for k in range(pages))]
                if starts:
                    r = ch.choice(starts)
                    for k in range(pages):
                        self.free_refs.remove(r + k)
                    return spec.make_handle(r, off)
            else:
                starts = [f for f in self.free_frames
                          if all(f + k in self.free_frames for k in range(pages))]
                if starts:
                    f = ch.choice(starts)
                    for k in range(pages):
                        self.free_frames.remove(f + k)
                    return f << spec.PAGE_SHIFT | off
        raise RuntimeError("the world ran out of data buffers for one case")


@dataclass
class _Req:
    """A request's descriptors (in chain order) and what it should complete with."""

    segs: list[Seg]
    status: int | None  # expected status, None when the request is not meant to complete

    @property
    def last(self) -> int:
        """Position of the last non-empty descriptor (the one holding the status byte)."""
        return max(k for k, s in enumerate(self.segs) if s.len)


def _good_request(b: _CaseBuilder, *, kinds: Sequence[str] | None = None,
                  compact: bool = False) -> _Req:
    """A well-formed virtio-blk request (virtio 1.x section 5.2.6) in one of many layouts:
    header alone, split in two or sharing the data's descriptor; data in one or two
    descriptors at any page offset, zero-length descriptors in between; status byte alone or
    at the end of the data. ``compact``: header, data and status in at most three
    descriptors."""
    ch, w = b.ch, b.w

    def odd(p: float = 0.2) -> bool:
        return not compact and ch.bool(p)

    kind = ch.choice(kinds or ("in", "in", "out", "out", "flush", "get_id", "unsupp",
                               "in_past_end", "out_past_end", "in_odd", "in_zero"))
    cap = w.capacity
    nsec = ch.choice((1, 1, 1, 2))
    sector = ch.int(0, cap - nsec)
    status = spec.VIRTIO_BLK_S_OK
    data_len = 0
    req_type = spec.VIRTIO_BLK_T_IN
    writable = True
    if kind == "in":
        data_len = nsec * 512
    elif kind == "out":
        req_type, writable, data_len = spec.VIRTIO_BLK_T_OUT, False, nsec * 512
    elif kind == "flush":
        req_type = spec.VIRTIO_BLK_T_FLUSH
    elif kind == "get_id":
        req_type, data_len = spec.VIRTIO_BLK_T_GET_ID, ch.choice((20, 20, 8, 32))
    elif kind == "unsupp":
        req_type = ch.choice((2, 3, 5, 11, 0xFFFF_FFFF))
        status = spec.VIRTIO_BLK_S_UNSUPP
        data_len = ch.choice((0, 512))
    elif kind in ("in_past_end", "out_past_end"):
        # sectors past the end of the disk, including values whose byte offset wraps 64 bits
        sector = ch.choice((cap, cap - nsec + 1, cap + 1000, 1 << 32, 1 << 55, (1 << 64) - 1))
        data_len = nsec * 512
        status = spec.VIRTIO_BLK_S_IOERR
        if kind == "out_past_end":
            req_type, writable = spec.VIRTIO_BLK_T_OUT, False
    elif kind == "in_odd":
        data_len = ch.choice((1, 100, 511, 513))
        status = spec.VIRTIO_BLK_S_IOERR
    elif kind == "in_zero":
        data_len = 0
    header = struct.pack("<IIQ", req_type, ch.int(0, 3) * 0x10001, sector)
    slot = b.slot()
    segs: list[Seg] = []
    # header: one descriptor, split in two, or shared with readable data
    share_header = bool(not writable and data_len and odd())
    data_addr = None
    if share_header:
        buf = b.buffer(16 + data_len, writable=False)
        b.put(buf, header)
        segs.append(Seg(buf, 16 + data_len, False))
        data_addr = buf + 16
    else:
        b.put(slot, header)
        if odd():
            k = ch.int(1, 15)
            segs += [Seg(slot, k, False), Seg(slot + k, 16 - k, False)]
        else:
            segs.append(Seg(slot, 16, False))
    status_addr = slot + 16 + ch.int(0, 15)
    status_with_data = bool(writable and data_len and odd())
    if data_len and not share_header:
        if status_with_data:
            buf = b.buffer(data_len + 1, writable=True)
            parts = [(buf, data_len + 1)]
        else:
            buf = b.buffer(data_len, writable=writable)
            parts = [(buf, data_len)]
            if odd(0.3) and data_len >= 2:  # split over two descriptors, different pages
                k = ch.int(1, data_len - 1)
                buf2 = b.buffer(data_len - k, writable=writable)
                parts = [(buf, k), (buf2, data_len - k)]
        for addr, ln in parts:
            if not writable:
                b.put(addr, b.payload(ln))
            segs.append(Seg(addr, ln, writable))
            if odd(0.1):  # zero-length buffers in the middle: no access, whatever address
                segs.append(Seg(ch.choice((0, addr, U64, 1 << 63)), 0, writable))
    elif share_header:
        b.put(data_addr, b.payload(data_len))
    if not status_with_data:
        b.put(status_addr, b"\xa5")
        segs.append(Seg(status_addr, 1, True))
    else:
        b.put(segs[-1].addr + segs[-1].len - 1, b"\xa5")
    return _Req(segs, status)


def _chain(ch: Chooser, n: int, segs: Sequence[Seg], used: set[int] | None = None
           ) -> tuple[int, list[tuple[int, int, int, int, int]]]:
    """Assign descriptor indices (distinct, < n, not in ``used``) and NEXT links."""
    used = set() if used is None else used
    free = [i for i in range(n) if i not in used]
    if len(free) < len(segs):
        raise ValueError("chain longer than the free descriptors")
    if ch.bool(0.5):
        start = ch.int(0, len(free) - len(segs))
        idx = free[start:start + len(segs)]
    else:
        idx = []
        for _ in segs:
            i = ch.choice([f for f in free if f not in idx])
            idx.append(i)
    used.update(idx)
    out = []
    for k, s in enumerate(segs):
        flags = (spec.VIRTQ_DESC_F_WRITE if s.write else 0) | s.flags
        nxt = 0
        if k + 1 < len(segs):
            flags |= spec.VIRTQ_DESC_F_NEXT
            nxt = idx[k + 1]
        elif ch.bool(0.2):
            nxt = ch.int(0, 0xFFFF)  # garbage in `next` without NEXT: ignored
        out.append((idx[k], s.addr & U64, s.len, flags, nxt))
    return idx[0], out


def _assemble(ch: Chooser, w: World, index: int, category: str, expect: Expect,
              reqs: Sequence[_Req], b: _CaseBuilder, *, queue: QueueSpec | None = None,
              **kw: Any) -> Case:
    q = queue or w.standard_queue()
    reqs = list(reqs)
    while len(reqs) > 1 and sum(len(r.segs) for r in reqs) > q.n:
        reqs.pop(0)  # drop good requests in front of the last one until the queue holds them
    used: set[int] = set()
    heads, descs = [], []
    for r in reqs:
        h, d = _chain(ch, q.n, r.segs, used)
        heads.append(h)
        descs += d
    flags = spec.VIRTQ_AVAIL_F_NO_INTERRUPT if ch.bool(0.1) else 0
    if expect.cause == 0 and expect.statuses is None:
        expect = Expect(0, tuple(r.status for r in reqs), expect.ignored_notify)
    return Case(index, category, expect, q, descs=descs, heads=heads, avail_flags=flags,
                writes=b.writes, **kw)


def _good_batch(ch: Chooser, b: _CaseBuilder, k: int) -> list[_Req]:
    return [_good_request(b) for _ in range(k)]


# --- category generators -----------------------------------------------------------------------
# Each returns a Case. ``pre`` good requests may come before the hostile one in the same notify
# (they complete; the hostile one then stops the device).

Gen = Callable[[Chooser, World, int], Case]


def _with_pre(ch: Chooser, b: _CaseBuilder) -> list[_Req]:
    return _good_batch(ch, b, ch.choice((0, 0, 0, 1, 1, 2)))


def _data_fault(ch: Chooser, w: World, index: int, category: str, cause: int,
                addr_fn: Callable[[Seg], int], *, writable: bool | None = None) -> Case:
    """A request whose data (or header/status) descriptor names a hostile address."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    kinds = ("in", "out") if writable is None else (("in",) if writable else ("out",))
    req = _good_request(b, kinds=kinds)
    target = ch.choice(("data", "data", "data", "header", "status")) if writable is None \
        else "data"
    if target == "header":
        i = 0
    elif target == "status":
        i = req.last
    else:
        inner = [k for k, s in enumerate(req.segs[1:-1], 1)
                 if s.len > 0 and (writable is None or s.write == writable)]
        i = ch.choice(inner) if inner else len(req.segs) - 1
    s = req.segs[i]
    req.segs[i] = Seg(addr_fn(s), s.len, s.write, s.flags)
    return _assemble(ch, w, index, category, Expect(cause), [*pre, req], b,
                     note=f"desc #{i} ({target})")


def gen_not_handle(ch: Chooser, w: World, index: int) -> Case:
    """Bit 63 clear: a guest physical address where a handle is expected (cause 1)."""
    return _data_fault(ch, w, index, "not_handle", spec.FAULT_NOT_HANDLE,
                       lambda s: ch.choice((s.addr & ~spec.HANDLE_BIT,
                                            F_DATA[0] << 12 | (s.addr & 0xFFF),
                                            ch.int(0, (1 << 63) - 1))))


def gen_ref_outside(ch: Chooser, w: World, index: int) -> Case:
    """A grant reference at or beyond the table's end (cause 2)."""
    def addr(s: Seg) -> int:
        ref = ch.choice((w.entries, w.entries + 1, w.entries * 2, ch.int(w.entries, 1 << 40),
                         spec.GRANT_REF_MASK - 1))  # (the last one would wrap 2**64)
        return spec.make_handle(ref, s.addr & 0xFFF)
    return _data_fault(ch, w, index, "ref_outside", spec.FAULT_REF_RANGE, addr)


def gen_not_permitted(ch: Chooser, w: World, index: int) -> Case:
    """An entry that is invalid, accept_transfer, type 3, or read-only without permit (3);
    includes the never-written entries above the stream's references."""
    refs = [40, 41, 42, 43, 47, ch.int(56, w.entries - 1)]
    return _data_fault(ch, w, index, "not_permitted", spec.FAULT_NOT_PERMITTED,
                       lambda s: spec.make_handle(ch.choice(refs), s.addr & 0xFFF))


def gen_wrong_domain(ch: Chooser, w: World, index: int) -> Case:
    """A valid entry granted to another domain (cause 4)."""
    return _data_fault(ch, w, index, "wrong_domain", spec.FAULT_WRONG_DOMAIN,
                       lambda s: spec.make_handle(ch.choice((44, 45)), s.addr & 0xFFF))


def gen_readonly_write(ch: Chooser, w: World, index: int) -> Case:
    """The device is asked to write into a read-only grant: T_IN data, the status byte, or the
    used ring (cause 5)."""
    where = ch.choice(("data", "data", "status", "used"))
    ro = sorted(w.readonly_refs)
    if where == "used":
        b = _CaseBuilder(ch, w)
        reqs = [*_with_pre(ch, b), _good_request(b)]
        patch = [(R_USED, GrantEntry.permit(w.domid, F_USED, readonly=True))]
        return _assemble(ch, w, index, "readonly_write", Expect(spec.FAULT_READONLY), reqs, b,
                         patches=patch, note="used ring granted read-only")
    if where == "status":
        b = _CaseBuilder(ch, w)
        pre = _with_pre(ch, b)
        req = _good_request(b, kinds=("flush", "out", "in"))
        s = req.segs[req.last]
        addr = spec.make_handle(ch.choice(ro), ch.int(0, max(0, PAGE - s.len)))
        req.segs[req.last] = Seg(addr, s.len, True)
        return _assemble(ch, w, index, "readonly_write", Expect(spec.FAULT_READONLY),
                         [*pre, req], b, note="status byte in a read-only grant")
    return _data_fault(ch, w, index, "readonly_write", spec.FAULT_READONLY,
                       lambda s: spec.make_handle(ch.choice(ro), s.addr & 0xFFF), writable=True)


def gen_run_off_grant(ch: Chooser, w: World, index: int) -> Case:
    """A buffer that starts in a good grant and runs into the next reference, which is not
    granted (or granted read-only for a device write, or to another domain): the first page is
    moved, the access stops at the second page's first byte."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    write = ch.bool()
    # references whose successor is hostile: 39 -> 40 (invalid), or a data ref followed by a
    # read-only one for a device write, or a spare (never written) reference
    cands: list[tuple[int, int]] = []
    if not write or 39 not in w.readonly_refs:
        cands.append((39, spec.FAULT_NOT_PERMITTED))
    if write:
        cands += [(r, spec.FAULT_READONLY) for r in R_DATA
                  if r + 1 in w.readonly_refs and r not in w.readonly_refs]
    ref, cause = ch.choice(cands)
    if ch.bool(0.3):  # an entry granted to a free reference, its successor unwritten
        ref, cause = R_SPARE[-1], spec.FAULT_NOT_PERMITTED
        frame = ch.choice(list(F_QUARANTINE))
        patches = [(ref, GrantEntry.permit(w.domid, frame))]
    else:
        patches = []
    nsec = ch.choice((1, 2))
    data_len = nsec * 512
    off = ch.int(PAGE - data_len + 1, PAGE - 1)
    req_type = spec.VIRTIO_BLK_T_IN if write else spec.VIRTIO_BLK_T_OUT
    slot = b.slot()
    b.put(slot, struct.pack("<IIQ", req_type, 0, ch.int(0, w.capacity - nsec)))
    addr = spec.make_handle(ref, off)
    if not write:
        b.put(addr, b.payload(data_len))
    segs = [Seg(slot, 16, False), Seg(addr, data_len, write), Seg(slot + 20, 1, True)]
    return _assemble(ch, w, index, "run_off_grant", Expect(cause), [*pre, _Req(segs, None)], b,
                     patches=patches, note=f"ref {ref} + 1")


def gen_bus_error(ch: Chooser, w: World, index: int) -> Case:
    """SLVERR on a chosen transaction (avail, head, descriptor, header, data read or write,
    status, used element, used index) or DECERR (a grant or address beyond memory): cause 6."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    where = ch.choice(("desc", "avail", "header", "data_r", "data_w", "status", "used",
                       "decerr"))
    kinds = {"data_r": ("out",), "data_w": ("in",)}.get(where, ("in", "out", "flush"))
    req = _good_request(b, kinds=kinds)
    q = w.standard_queue()
    errors: list[tuple[str, int]] = []
    note = where
    if where == "decerr":
        i = req.last if ch.bool(0.3) else 0
        s = req.segs[i]
        if w.handle_mode:  # inside one page: no later translation fault hides the error
            addr = spec.make_handle(R_DECERR, min(s.addr & 0xFFF, max(0, PAGE - s.len)))
        else:
            addr = ch.choice((w.mem_bytes + ch.int(0, 1 << 20), 1 << 40, (1 << 64) - PAGE))
        req.segs[i] = Seg(addr, s.len, s.write)
    elif where in ("desc", "avail", "used"):
        base = {"desc": q.desc, "avail": q.avail, "used": q.used}[where]
        errors.append(("W" if where == "used" else "R", w.phys(base)))
    elif where == "header":
        errors.append(("R", w.phys(req.segs[0].addr)))
    elif where == "status":
        s = req.segs[req.last]
        errors.append(("W", w.phys(s.addr + s.len - 1)))
    else:
        want = where == "data_w"
        data = [s for s in req.segs[1:] if s.len and s.write == want] \
            or [s for s in req.segs if s.len and s.write == want]
        s = ch.choice(data)
        errors.append(("W" if s.write else "R", w.phys(s.addr)))
    # only the hostile request's own pages may fail: good requests before it use other pages,
    # but rings are shared, so rings fail only without earlier good requests
    if where in ("desc", "avail", "used", "header", "status"):
        pre = []
    return _assemble(ch, w, index, "bus_error", Expect(spec.FAULT_BUS_ERROR), [*pre, req], b,
                     errors=errors, note=note)


def _chain_case(ch: Chooser, w: World, index: int, category: str, cause: int,
                mutate: Callable[[list[tuple[int, int, int, int, int]], int], None],
                *, n: int | None = None, kinds: Sequence[str] | None = None) -> Case:
    """A good request whose descriptors are then mutated (descriptor-level hostility)."""
    b = _CaseBuilder(ch, w)
    req = _good_request(b, kinds=kinds)
    n = w.queue_size if n is None else n
    while n < len(req.segs) + 1:
        n *= 2
    q = w.standard_queue(n)
    case = _assemble(ch, w, index, category, Expect(cause), [req], b, queue=q)
    mutate(case.descs, q.n)
    return case


def gen_index_outside(ch: Chooser, w: World, index: int) -> Case:
    """A ``next`` index, or the avail ring's head, outside the queue (cause 7)."""
    b = _CaseBuilder(ch, w)
    q = w.standard_queue()
    case = _assemble(ch, w, index, "index_outside", Expect(spec.FAULT_BAD_CHAIN),
                     [_good_request(b)], b)
    if ch.bool(0.3):
        case.heads[0] = ch.choice((q.n, q.n + 1, 0xFFFF))
        case.note = f"head {case.heads[0]}"
    else:
        k = ch.int(0, len(case.descs) - 1)
        i, a, ln, fl, _ = case.descs[k]
        nxt = ch.choice((q.n, q.n + 3, 0xFFFF))
        case.descs[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_NEXT, nxt)
        case.note = f"desc {i} next {nxt}"
    return case


def gen_chain_loop(ch: Chooser, w: World, index: int) -> Case:
    """A chain whose last descriptor points back into it (cause 7 at descriptor N + 1)."""
    def mutate(descs, n):
        k = len(descs) - 1
        i, a, ln, fl, _ = descs[k]
        target = descs[ch.int(0, k)][0]
        descs[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_NEXT, target)
    return _chain_case(ch, w, index, "chain_loop", spec.FAULT_BAD_CHAIN, mutate,
                       n=ch.choice((4, 8, 8, 16)))


def gen_chain_too_long(ch: Chooser, w: World, index: int) -> Case:
    """Every descriptor of the queue chained (a status-writable tail), the last one linking on:
    descriptor N + 1 is reached (cause 7)."""
    n = ch.choice((2, 4, 8))
    b = _CaseBuilder(ch, w)
    q = w.standard_queue(n)
    slot = b.slot()
    b.put(slot, struct.pack("<IIQ", spec.VIRTIO_BLK_T_FLUSH, 0, 0))
    order = list(range(n))
    random.Random(ch.seed()).shuffle(order)
    descs = []
    for k, i in enumerate(order):
        writable = k >= n // 2 or n == 1
        addr = slot if not writable else slot + 16 + k
        ln = 16 if k == 0 else (0 if not writable else 1)
        nxt = order[k + 1] if k + 1 < n else order[ch.int(0, n - 1)]
        descs.append((i, addr, ln, (spec.VIRTQ_DESC_F_WRITE if writable else 0)
                      | spec.VIRTQ_DESC_F_NEXT, nxt))
    return Case(index, "chain_too_long", Expect(spec.FAULT_BAD_CHAIN), q, descs=descs,
                heads=[order[0]], writes=b.writes, note=f"N={n}")


def gen_indirect(ch: Chooser, w: World, index: int) -> Case:
    """VIRTQ_DESC_F_INDIRECT, not offered (cause 7)."""
    def mutate(descs, n):
        k = ch.int(0, len(descs) - 1)
        i, a, ln, fl, nx = descs[k]
        descs[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_INDIRECT, nx)
    return _chain_case(ch, w, index, "indirect", spec.FAULT_BAD_CHAIN, mutate)


def gen_readable_after_writable(ch: Chooser, w: World, index: int) -> Case:
    """A device-readable descriptor after a device-writable one (cause 7)."""
    def mutate(descs, n):
        # make the header writable while a readable descriptor still follows, or append a
        # readable descriptor after the status byte
        if len(descs) >= 3 and not descs[1][3] & spec.VIRTQ_DESC_F_WRITE:
            i, a, ln, fl, nx = descs[0]
            descs[0] = (i, a, ln, fl | spec.VIRTQ_DESC_F_WRITE, nx)
            return
        i, a, ln, fl, _ = descs[-1]
        free = [j for j in range(n) if j not in {d[0] for d in descs}]
        j = ch.choice(free)
        descs[-1] = (i, a, ln, fl | spec.VIRTQ_DESC_F_NEXT, j)
        descs.append((j, descs[0][1], 16, 0, 0))
    return _chain_case(ch, w, index, "readable_after_writable", spec.FAULT_BAD_CHAIN, mutate,
                       kinds=("out", "out", "flush", "in"), n=ch.choice((8, 16)))


def gen_addr_wrap(ch: Chooser, w: World, index: int) -> Case:
    """``addr + len`` past 2**64 (cause 7)."""
    def mutate(descs, n):
        k = ch.int(0, len(descs) - 1)
        i, _, _, fl, nx = descs[k]
        ln2 = ch.choice((2, PAGE, 0x8000_0000))
        a2 = (1 << 64) - ch.int(1, ln2 - 1)
        descs[k] = (i, a2, ln2, fl, nx)
    return _chain_case(ch, w, index, "addr_wrap", spec.FAULT_BAD_CHAIN, mutate)


def gen_total_len(ch: Chooser, w: World, index: int) -> Case:
    """The chain's lengths add up to more than 2**32 - 1 (cause 7); no byte is moved first."""
    def mutate(descs, n):
        i, a, _, fl, nx = descs[-1]
        # status descriptor huge: total = 16 + ... + big > 2**32 - 1
        descs[-1] = (i, a, 0xFFFF_FFFF - ch.int(0, 15), fl, nx)
    return _chain_case(ch, w, index, "total_len", spec.FAULT_BAD_CHAIN, mutate,
                       kinds=("flush", "get_id", "in"))


def gen_avail_jump(ch: Chooser, w: World, index: int) -> Case:
    """avail.idx moved by more than the queue size: more chains in flight than the queue holds,
    or a jump backwards (cause 8, address = avail.idx)."""
    b = _CaseBuilder(ch, w)
    req = _good_request(b, kinds=("flush",))
    n = w.queue_size
    delta = ch.choice((n + 1, n + 2, 2 * n, 0x8000, 0xFFFF, 0x10000 - n))
    return _assemble(ch, w, index, "avail_jump", Expect(spec.FAULT_BAD_RING), [req], b,
                     avail_delta=delta, note=f"delta {delta}")


def gen_bad_queue(ch: Chooser, w: World, index: int) -> Case:
    """Queue size 0, above QueueNumMax, or not a power of two; or a ring address misaligned for
    its type (descriptor table 16, avail 2, used 4): cause 8 with the offending value."""
    what = ch.choice(("size", "size", "desc", "avail", "used"))
    q = w.standard_queue()
    if what == "size":
        n = ch.choice((0, 3, 6, 12, w.queue_num_max + 1, 2 * w.queue_num_max,
                       w.queue_num_max * 2 - 1, 0xFFFF_FFFF, 1 << 31))
        q = QueueSpec(n, q.desc, q.avail, q.used)
    elif what == "desc":
        q = QueueSpec(q.n, q.desc + ch.choice((1, 2, 4, 8, 12)), q.avail, q.used)
    elif what == "avail":
        q = QueueSpec(q.n, q.desc, q.avail + ch.choice((1, 3)), q.used)
    else:
        q = QueueSpec(q.n, q.desc, q.avail, q.used + ch.choice((1, 2, 3)))
    return Case(index, "bad_queue", Expect(spec.FAULT_BAD_RING), q, heads=[0], note=what)


def gen_ring_not_handle(ch: Chooser, w: World, index: int) -> Case:
    """The queue addresses themselves are hostile: not a handle (1), an entry not permitted (3)
    or for another domain (4); the used ring read-only is in ``readonly_write``."""
    q = w.standard_queue()
    which = ch.choice(("desc", "avail", "used"))
    kind = ch.choice(("gpa", "invalid", "domain"))
    bad = {"gpa": F_DESC << 12, "invalid": spec.make_handle(40),
           "domain": spec.make_handle(44)}[kind]
    cause = {"gpa": spec.FAULT_NOT_HANDLE, "invalid": spec.FAULT_NOT_PERMITTED,
             "domain": spec.FAULT_WRONG_DOMAIN}[kind]
    b = _CaseBuilder(ch, w)
    req = _good_request(b, kinds=("flush", "in"))
    q = QueueSpec(q.n, bad if which == "desc" else q.desc, bad if which == "avail" else q.avail,
                  bad if which == "used" else q.used)
    case = _assemble(ch, w, index, "ring_not_handle", Expect(cause), [req], b, queue=q,
                     note=f"{which} {kind}")
    return case


def gen_bad_request(ch: Chooser, w: World, index: int) -> Case:
    """Malformed virtio-blk framing: header writable, status byte read-only or missing, header
    shorter than 16 readable bytes (cause 9, address = head)."""
    what = ch.choice(("header_writable", "status_readonly", "status_missing", "short_header",
                      "zero_header"))
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    req = _good_request(b, kinds=("flush", "get_id", "in") if what == "header_writable"
                        else ("flush", "out"))
    segs = req.segs
    if what == "header_writable":
        segs = [Seg(s.addr, s.len, True) for s in segs]
    elif what == "status_readonly":
        segs = [Seg(s.addr, s.len, False) for s in segs]
    elif what == "status_missing":
        segs = [s for s in segs if not s.write]
    elif what == "short_header":  # fewer than 16 readable bytes in total
        segs = [Seg(segs[0].addr, ch.int(1, 15), False), segs[-1]]
    else:  # zero-length header descriptor only
        segs = [Seg(segs[0].addr, 0, False), segs[-1]]
    return _assemble(ch, w, index, "bad_request", Expect(spec.FAULT_BAD_REQUEST),
                     [*pre, _Req(segs, None)], b, note=what)


def gen_zero_length(ch: Chooser, w: World, index: int) -> Case:
    """Zero-length descriptors with any address: no access is made, the request completes."""
    b = _CaseBuilder(ch, w)
    req = _good_request(b, kinds=("in", "out", "flush", "get_id"))
    segs = list(req.segs)
    for _ in range(ch.int(1, 3)):
        k = ch.int(0, len(segs))
        # readable zero-length pieces only before the first writable one
        first_w = next(j for j, s in enumerate(segs) if s.write)
        write = k > first_w or (k == first_w and ch.bool())
        segs.insert(k, Seg(ch.choice((0, U64, spec.make_handle(40), spec.make_handle(w.entries),
                                      (1 << 64) - 1)), 0, write))
    return _assemble(ch, w, index, "zero_length", Expect(0, (req.status,)), [_Req(segs, None)],
                     b)


def gen_sector_past_end(ch: Chooser, w: World, index: int) -> Case:
    """Sectors past the end of the disk: IOERR, nothing moved (a completion, not a fault)."""
    b = _CaseBuilder(ch, w)
    reqs = [_good_request(b, kinds=("in_past_end", "out_past_end"))
            for _ in range(ch.int(1, 2))]
    return _assemble(ch, w, index, "sector_past_end", Expect(0, (spec.VIRTIO_BLK_S_IOERR,)),
                     reqs, b)


def gen_edge_ok(ch: Chooser, w: World, index: int) -> Case:
    """Limits that must be accepted: a chain of exactly N descriptors, exactly N chains in
    flight, other queue sizes, ring addresses aligned but not page-aligned."""
    what = ch.choice(("n_descs", "n_chains", "queue_size"))
    b = _CaseBuilder(ch, w)
    if what == "n_descs":
        n = ch.choice((2, 4, 8))
        q = w.standard_queue(n)
        slot = b.slot()
        b.put(slot, struct.pack("<IIQ", spec.VIRTIO_BLK_T_FLUSH, 0, 0))
        b.put(slot + 16, bytes(n))
        segs = [Seg(slot, 16, False)] + [Seg(0, 0, False)] * (n // 2 - 1) \
            + [Seg(slot + 16 + k, 1 if k == n - n // 2 - 1 else 0, True)
               for k in range(n - n // 2)]
        return _assemble(ch, w, index, "edge_ok", Expect(0), [_Req(segs, 0)], b, queue=q,
                         note="chain of N")
    if what == "n_chains":
        n = ch.choice((2, 4, 8))
        q = w.standard_queue(n)
        req = _good_request(b, kinds=("flush",) if n == 2 else ("flush", "get_id"), compact=True)
        case = _assemble(ch, w, index, "edge_ok", Expect(0), [req], b, queue=q)
        case.heads = case.heads * n
        case.note = f"{n} chains in a queue of {n}"
        return case
    n = ch.choice((2, 4, 16, 32, w.queue_num_max))
    offs = (ch.int(0, (PAGE - 16 * n) // 16) * 16, ch.int(0, (PAGE - 6 - 2 * n) // 2) * 2,
            ch.int(0, (PAGE - 6 - 8 * n) // 4) * 4)
    q = w.standard_queue(n, offs)
    reqs = [_good_request(b, compact=n < 8) for _ in range(ch.int(1, 2))]
    if n == 2:
        reqs = [_good_request(b, kinds=("flush",), compact=True)]
        reqs[0].segs = [s for s in reqs[0].segs if s.len]
    return _assemble(ch, w, index, "edge_ok", Expect(0), reqs, b, queue=q,
                     note=f"queue of {n} at offsets {offs}")


def gen_notify_ignored(ch: Chooser, w: World, index: int) -> Case:
    """A notify the device must ignore (QueueReady 0, value other than queue 0, DRIVER_OK
    clear); the driver then fixes it and the request completes."""
    b = _CaseBuilder(ch, w)
    reqs = _good_batch(ch, b, 1)
    how = ch.choice(("not_ready", "bad_value", "no_driver_ok"))
    return _assemble(ch, w, index, "notify_ignored", Expect(0, ignored_notify=True), reqs, b,
                     notify=how, note=how)


def gen_good(ch: Chooser, w: World, index: int) -> Case:
    """One to three well-formed requests of every type and layout."""
    b = _CaseBuilder(ch, w)
    reqs = _good_batch(ch, b, ch.choice((1, 1, 2, 3)))
    return _assemble(ch, w, index, "good", Expect(0, tuple(r.status for r in reqs)), reqs, b)


# Category -> (generator, weight, handle mode only)
CATEGORIES: dict[str, tuple[Gen, int, bool]] = {
    "good": (gen_good, 16, False),
    "not_handle": (gen_not_handle, 4, True),
    "ref_outside": (gen_ref_outside, 4, True),
    "not_permitted": (gen_not_permitted, 4, True),
    "wrong_domain": (gen_wrong_domain, 4, True),
    "readonly_write": (gen_readonly_write, 4, True),
    "run_off_grant": (gen_run_off_grant, 4, True),
    "ring_not_handle": (gen_ring_not_handle, 2, True),
    "bus_error": (gen_bus_error, 6, False),
    "index_outside": (gen_index_outside, 3, False),
    "chain_loop": (gen_chain_loop, 3, False),
    "chain_too_long": (gen_chain_too_long, 2, False),
    "indirect": (gen_indirect, 2, False),
    "readable_after_writable": (gen_readable_after_writable, 3, False),
    "addr_wrap": (gen_addr_wrap, 2, False),
    "total_len": (gen_total_len, 2, False),
    "avail_jump": (gen_avail_jump, 3, False),
    "bad_queue": (gen_bad_queue, 3, False),
    "bad_request": (gen_bad_request, 4, False),
    "zero_length": (gen_zero_length, 3, False),
    "sector_past_end": (gen_sector_past_end, 3, False),
    "edge_ok": (gen_edge_ok, 3, False),
    "notify_ignored": (gen_notify_ignored, 3, False),
}


def categories_for(handle_mode: bool) -> list[str]:
    return [k for k, (_, _, h) in CATEGORIES.items() if handle_mode or not h]


def generate(ch: Chooser, w: World, index: int, category: str | None = None) -> Case:
    """The next case of a stream: a category by weight (or the one given), then its case."""
    if category is None:
        names = categories_for(w.handle_mode)
        pick = ch.int(0, sum(CATEGORIES[k][1] for k in names) - 1)
        for name in names:
            pick -= CATEGORIES[name][1]
            if pick < 0:
                category = name
                break
    assert category is not None
    return CATEGORIES[category][0](ch, w, index)


# --- races: a request that moves several bursts, and what the hypervisor does to it -----------


def gen_big_request(ch: Chooser, w: World, index: int, *, disk_writes: bool = True) -> Case:
    """One well-formed request moving 1 to 5 KiB in one or two data descriptors at any page
    offset, so that it spans pages and, at every data width, often several bursts per page:
    the stimulus that resets and revocations race with. It always interrupts (the race ends
    on ``irq``). ``disk_writes=False``: no T_OUT (a hardware reset may cut a disk write
    anywhere)."""
    b = _CaseBuilder(ch, w)
    kind = ch.choice(("in", "out") if disk_writes else ("in",))
    nsec = ch.int(2, 10)
    d = nsec * 512
    sector = ch.int(0, w.capacity - nsec)
    req_type = spec.VIRTIO_BLK_T_IN if kind == "in" else spec.VIRTIO_BLK_T_OUT
    slot = b.slot()
    b.put(slot, struct.pack("<IIQ", req_type, 0, sector))
    segs = [Seg(slot, 16, False)]
    cut = ch.choice((d, d, ch.int(1, d - 1)))
    for ln in (cut, d - cut):
        if ln:
            addr = b.buffer(ln, writable=kind == "in")
            if kind == "out":
                b.put(addr, b.payload(ln))
            segs.append(Seg(addr, ln, kind == "in"))
    b.put(slot + 20, b"\xa5")
    segs.append(Seg(slot + 20, 1, True))
    case = _assemble(ch, w, index, "race", Expect(0), [_Req(segs, spec.VIRTIO_BLK_S_OK)], b,
                     note=f"{kind} {d} bytes")
    case.avail_flags = 0
    return case


def case_refs(case: Case) -> list[int]:
    """Grant references named by the case's descriptors (every page they span), in order."""
    refs: list[int] = []
    for _, a, ln, _, _ in case.descs:
        if not a >> 63 or not ln:
            continue
        first, last = spec.split_handle(a)[0], spec.split_handle((a + ln - 1) & U64)[0]
        refs += [r for r in range(first, last + 1) if r not in refs]
    return refs


@dataclass(frozen=True)
class TableWrite:
    """One hypervisor write to ``GRANT[ref]`` word ``word`` (0: flags/domid, 1: frame)."""

    ref: int
    word: int
    value: int
    what: str

    @property
    def offset(self) -> int:
        return spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * self.ref + 4 * self.word

    def apply(self, e: GrantEntry) -> GrantEntry:
        w0, w1 = e.pack()
        return GrantEntry.unpack(self.value if self.word == 0 else w0,
                                 self.value if self.word == 1 else w1)


def gen_table_write(ch: Chooser, w: World, case: Case) -> TableWrite:
    """What the hypervisor does to a grant the case uses: revoke it, make it read-only, or
    point it at another frame (one word write each, so it lands in one cycle)."""
    refs = [r for r in case_refs(case) if r in w.grants] or [R_SLOT[0]]
    data = [r for r in refs if r in R_DATA]
    ref = ch.choice(data) if data and ch.bool(0.8) else ch.choice(refs)
    e = w.grants[ref]
    what = ch.choice(("revoke", "revoke", "readonly", "remap"))
    if what == "revoke":
        return TableWrite(ref, 0, 0, "revoke")
    if what == "readonly":
        return TableWrite(ref, 0, e.pack()[0] | spec.GTF_readonly, "readonly")
    return TableWrite(ref, 1, F_QUARANTINE[ref % len(F_QUARANTINE)], "remap")


# =================================================================================================
# The oracle: the reference model plus an access count
# =================================================================================================


class OracleDevice(ReferenceDevice):
    """:class:`ReferenceDevice` plus what the isolation tests need from the oracle.

    It counts DMA accesses (``dma_accesses``), for :func:`cycle_bound`. The "Grant revocation"
    rule of docs/architecture.md (a new lookup before the next burst after a table write, even
    inside a page) is the reference's own (``table_gen``).
    """

    def __init__(self, mem: GuestMemory, **kw: Any) -> None:
        self.dma_accesses = 0
        super().__init__(mem, **kw)

    def dma_read(self, v: int, n: int, sink: Callable[[int, bytes], None] | None = None) -> bytes:
        self.dma_accesses += 1
        return super().dma_read(v, n, sink)

    def dma_write(self, v: int, data: bytes) -> None:
        self.dma_accesses += 1
        super().dma_write(v, data)


def cycle_bound(transactions: int, beats: int, lookups: int, accesses: int, *,
                pause: float = 0.0) -> int:
    """Cycles within which the RTL must finish what the reference did with these counts.

    Per DMA access a few cycles of engine and DMA control, per lookup the translation's two
    cycles, per transaction an address handshake, per beat one cycle (all stretched by the
    memory model's random pauses of probability ``pause`` on every channel), then a factor 2 of
    margin. A device that spins on a bad chain, or never advances after an error, blows it.
    """
    stretch = 1.0 / (1.0 - pause) if pause < 1 else 100.0
    base = 64 + 12 * accesses + 4 * lookups + (12 * transactions + 2 * beats) * stretch
    return int(2 * base)


# =================================================================================================
# Isolation on the reference's transactions
# =================================================================================================


class GrantView:
    """Which physical frames the table grants to the configured domain, for read and for write,
    recomputed when the table, the mode or the domain changed (``ReferenceDevice.table_gen``)."""

    def __init__(self, dev: OracleDevice) -> None:
        self.dev = dev
        self._gen = -1
        self.readable: set[int] = set()
        self.writable: set[int] = set()

    def refresh(self) -> None:
        if self._gen == self.dev.table_gen:
            return
        self._gen = self.dev.table_gen
        self.readable, self.writable = set(), set()
        for e in self.dev.grants:
            if e.permits_access and e.domid == self.dev.domid & 0xFFFF:
                self.readable.add(e.frame)
                if not e.readonly:
                    self.writable.add(e.frame)

    def permits(self, kind: str, addr: int, nbytes: int) -> bool:
        self.refresh()
        page = addr >> spec.PAGE_SHIFT
        if (addr + max(nbytes, 1) - 1) >> spec.PAGE_SHIFT != page:
            return False
        return page in (self.writable if kind == "W" else self.readable)


# =================================================================================================
# Applying cases: one driver for the reference and the RTL
# =================================================================================================

DRIVER_FEATURES_HI = 1 << (spec.VIRTIO_F_VERSION_1 - 32)
STATUS_BRINGUP = spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER


class Port(Protocol):
    async def read32(self, offset: int) -> int: ...

    async def write32(self, offset: int, value: int) -> None: ...


class ErrorSet(Protocol):
    def add(self, kind: str, addr: int) -> None: ...

    def clear(self) -> None: ...


class Link(Protocol):
    guest: Port
    hv: Port
    mem: GuestMemory
    errors: ErrorSet


@dataclass
class ReferenceLink:
    """The reference device as a :class:`Link`."""

    dev: OracleDevice
    errors: BusErrorPages

    @property
    def guest(self):
        return self.dev.guest

    @property
    def hv(self):
        return self.dev.hv

    @property
    def mem(self) -> GuestMemory:
        return self.dev.mem


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the reference model's ports) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a reference-model coroutine suspended")


class StreamDriver:
    """The hostile driver's shadow state and register sequences, over any :class:`Link`.

    The register accesses are those of virtio 1.x section 3.1.1 with nothing optional: reset
    (waiting for Status to read 0), ACKNOWLEDGE | DRIVER, VERSION_1 (and ACCESS_PLATFORM in
    handle mode), FEATURES_OK, the queue registers, QueueReady, DRIVER_OK.
    """

    def __init__(self, link: Link, world: World, *, reset_poll_limit: int = 10_000) -> None:
        self.link = link
        self.w = world
        self.queue: QueueSpec | None = None  # programmed queue, None after a reset
        self.avail_idx = 0
        self.needs_reset = True
        self.reset_poll_limit = reset_poll_limit

    async def hv_setup(self) -> None:
        """Hypervisor: domain, mode, every grant entry of the world (word 1 first)."""
        hv = self.link.hv
        await hv.write32(spec.HV_DOMID, self.w.domid)
        await hv.write32(spec.HV_CTRL, spec.HV_CTRL_HANDLE_MODE if self.w.handle_mode else 0)
        if self.w.handle_mode:
            for ref, e in sorted(self.w.grants.items()):
                await self.write_grant(ref, e)

    async def hv_config(self) -> None:
        """Domain and mode only (after ``rst``: the table survives in block RAM)."""
        await self.link.hv.write32(spec.HV_DOMID, self.w.domid)
        await self.link.hv.write32(spec.HV_CTRL,
                                   spec.HV_CTRL_HANDLE_MODE if self.w.handle_mode else 0)

    async def write_grant(self, ref: int, e: GrantEntry) -> None:
        w0, w1 = e.pack()
        off = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * ref
        await self.link.hv.write32(off + 4, w1)
        await self.link.hv.write32(off, w0)

    async def reset(self) -> None:
        g = self.link.guest
        await g.write32(spec.MMIO_STATUS, 0)
        for _ in range(self.reset_poll_limit):
            if await g.read32(spec.MMIO_STATUS) == 0:
                break
        else:
            raise TimeoutError("Status did not read 0 after a reset")
        self.queue = None
        self.avail_idx = 0
        self.needs_reset = False

    async def init(self, q: QueueSpec) -> None:
        """Reset and bring the device up with queue ``q`` (rings zeroed in memory first)."""
        g = self.link.guest
        await self.reset()
        for f in (F_DESC, F_AVAIL, F_USED):
            self.link.mem.write(f * PAGE, bytes(PAGE))
        await g.write32(spec.MMIO_STATUS, STATUS_BRINGUP)
        await g.write32(spec.MMIO_DRIVER_FEATURES_SEL, 1)
        hi = DRIVER_FEATURES_HI | (2 if self.w.handle_mode else 0)  # ACCESS_PLATFORM
        await g.write32(spec.MMIO_DRIVER_FEATURES, hi)
        await g.write32(spec.MMIO_STATUS, STATUS_BRINGUP | spec.STATUS_FEATURES_OK)
        await g.write32(spec.MMIO_QUEUE_NUM, q.n & 0xFFFF_FFFF)
        for lo, value in ((spec.MMIO_QUEUE_DESC_LOW, q.desc), (spec.MMIO_QUEUE_DRIVER_LOW,
                          q.avail), (spec.MMIO_QUEUE_DEVICE_LOW, q.used)):
            await g.write32(lo, value & 0xFFFF_FFFF)
            await g.write32(lo + 4, value >> 32)
        await g.write32(spec.MMIO_QUEUE_READY, 1)
        await g.write32(spec.MMIO_STATUS, STATUS_BRINGUP | spec.STATUS_FEATURES_OK
                        | spec.STATUS_DRIVER_OK)
        self.queue = q

    async def prepare(self, case: Case) -> None:
        """Everything up to the notify: reset and init if needed, memory, rings, grants, bus
        errors; and the register state an ignored notify needs."""
        if self.needs_reset or self.queue != case.queue:
            await self.init(case.queue)
        mem = self.link.mem
        for addr, data in case.writes:
            mem.write(addr, data)
        q = case.queue
        valid_n = 1 <= q.n <= self.w.queue_num_max and not q.n & (q.n - 1)
        dbase, abase = self.w.phys(q.desc), self.w.phys(q.avail)
        if valid_n and dbase is not None:
            for i, a, ln, fl, nx in case.descs:
                mem.write(dbase + 16 * i, struct.pack("<QIHH", a, ln, fl, nx))
        if valid_n and abase is not None:
            for k, h in enumerate(case.heads):
                mem.write(abase + 4 + 2 * ((self.avail_idx + k) % q.n), struct.pack("<H", h))
            delta = len(case.heads) if case.avail_delta is None else case.avail_delta
            mem.write(abase, struct.pack("<HH", case.avail_flags,
                                         (self.avail_idx + delta) & 0xFFFF))
            self.avail_idx = (self.avail_idx + delta) & 0xFFFF
        for ref, e in case.patches:
            await self.write_grant(ref, e)
        for kind, addr in case.errors:
            self.link.errors.add(kind, addr)
        g = self.link.guest
        if case.notify == "not_ready":
            await g.write32(spec.MMIO_QUEUE_READY, 0)
        elif case.notify == "no_driver_ok":
            await g.write32(spec.MMIO_STATUS, STATUS_BRINGUP | spec.STATUS_FEATURES_OK)

    async def kick(self, case: Case, *, first: bool) -> None:
        """The notify; for an ignored-notify case, ``first`` is the notify to be ignored and
        the second call fixes the register state and kicks properly."""
        g = self.link.guest
        if first and case.notify == "bad_value":
            await g.write32(spec.MMIO_QUEUE_NOTIFY, 1)
            return
        if not first:
            if case.notify == "not_ready":
                await g.write32(spec.MMIO_QUEUE_READY, 1)
            elif case.notify == "no_driver_ok":
                await g.write32(spec.MMIO_STATUS, STATUS_BRINGUP | spec.STATUS_FEATURES_OK
                                | spec.STATUS_DRIVER_OK)
        await g.write32(spec.MMIO_QUEUE_NOTIFY, 0)

    async def finish(self, case: Case, faulted: bool) -> None:
        """After the case: bus errors off, patched grants restored, fault unlatched."""
        self.link.errors.clear()
        for ref, _ in case.patches:
            await self.write_grant(ref, self.w.grants.get(ref, GrantEntry()))
        if faulted:
            await self.link.hv.write32(spec.HV_FAULT_STATUS, 1)
            self.needs_reset = True


# =================================================================================================
# One case on the reference: outcome and bound
# =================================================================================================


@dataclass
class Outcome:
    """What the device did in one case: used elements published ``(id, len, status byte)``,
    the fault it raised (cause, address) if any, and the counts the bound is computed from."""

    completions: list[tuple[int, int, int]]
    fault: tuple[int, int] | None
    transactions: list[Transaction]
    lookups: int
    accesses: int
    ignored_ok: bool = True  # an ignored notify made no bus access
    fault_count: int = 0  # HV_FAULT_COUNT after the case

    def beats(self, data_width: int) -> int:
        return sum(t.beats(data_width) for t in self.transactions)

    def bound(self, data_width: int, pause: float = 0.0) -> int:
        return cycle_bound(len(self.transactions), self.beats(data_width), self.lookups,
                           self.accesses, pause=pause)

    def summary(self) -> str:
        done = f"{len(self.completions)} completion(s), statuses " \
               f"{[c[2] for c in self.completions]}"
        if self.fault:
            return (f"fault cause {self.fault[0]} ({spec.FAULT_NAMES.get(self.fault[0])}) at "
                    f"{self.fault[1]:#x} after {done}")
        return done


def status_addr(case: Case, head: int) -> int | None:
    """Device address of the status byte of the chain at ``head``: the last byte of the last
    non-empty device-writable descriptor (docs "Ring engine", step 6)."""
    by_idx = {d[0]: d for d in case.descs}
    i, last = head, None
    for _ in range(len(by_idx) + 1):
        if i not in by_idx:
            break
        _, a, ln, fl, nx = by_idx[i]
        if fl & spec.VIRTQ_DESC_F_WRITE and ln:
            last = (a + ln - 1) & U64
        if not fl & spec.VIRTQ_DESC_F_NEXT:
            break
        i = nx
    return last


def read_completions(mem: GuestMemory, w: World, case: Case, first: int, count: int
                     ) -> list[tuple[int, int, int]]:
    """Used elements ``first .. first + count - 1`` of the case's queue, each with the status
    byte its chain ended with (-1 where that is not in memory)."""
    q = case.queue
    base = w.phys(q.used)
    assert base is not None
    out = []
    for k in range(count):
        uid, ulen = struct.unpack("<II", mem.read(base + 4 + 8 * ((first + k) % q.n), 8))
        a = status_addr(case, uid)
        p = w.phys(a) if a is not None else None
        st = mem.read(p, 1)[0] if p is not None and mem.contains(p, 1) else -1
        out.append((uid, ulen, st))
    return out


def check_expectation(case: Case, out: Outcome) -> str | None:
    """None if the reference's outcome is the one the case's category aims at, else why not."""
    e = case.expect
    if e.ignored_notify and not out.ignored_ok:
        return "the notify that must be ignored made the device act"
    if e.cause:
        if out.fault is None or out.fault[0] != e.cause:
            return f"expected fault cause {e.cause}, got {out.summary()}"
        return None
    if out.fault is not None:
        return f"expected completions, got {out.summary()}"
    if len(out.completions) != len(case.heads):
        return f"expected {len(case.heads)} completion(s), got {out.summary()}"
    got = [c[2] for c in out.completions]
    if e.statuses is not None and None not in e.statuses and len(e.statuses) == len(got) \
            and got != list(e.statuses):
        return f"expected statuses {list(e.statuses)}, got {got}"
    return None


class ReferenceStream:
    """A stream of cases on the reference model, checking the invariants of issue 4 on every
    case: every transaction in handle mode lies in a page granted, at that moment, with the
    permission it needs; nothing outside pages granted writable changed; the outcome is the one
    the category aims at. (Recovery after a fault is the next case's reset and init.)"""

    def __init__(self, world: World) -> None:
        self.w = world
        self.errors = BusErrorPages()
        self.dev = OracleDevice(GuestMemory(world.mem_bytes, world.initial_memory()),
                                entries=world.entries, queue_num_max=world.queue_num_max,
                                disk_bytes=world.disk_bytes, data_width=world.data_width,
                                bus_error=self.errors)
        self.link = ReferenceLink(self.dev, self.errors)
        self.drv = StreamDriver(self.link, world)
        self.view = GrantView(self.dev)
        self.violations: list[str] = []
        self.case: Case | None = None
        self.granted_w: set[int] = set()
        self.extra_hook: Callable[[Transaction], None] | None = None
        self.dev.on_transaction = self._on_transaction
        run_sync(self.drv.hv_setup())

    def _on_transaction(self, t: Transaction) -> None:
        if self.dev.handle_mode:
            if not self.view.permits(t.kind, t.addr, t.nbytes):
                what = self.case.describe() if self.case else "set-up"
                self.violations.append(
                    f"{what}: {t.kind} {t.addr:#x}+{t.nbytes} outside the pages granted for "
                    f"{'write' if t.kind == 'W' else 'read'}")
            self.granted_w |= self.view.writable
        if self.extra_hook is not None:
            self.extra_hook(t)

    def run(self, case: Case, at: tuple[int, Callable[[], None]] | None = None) -> Outcome:
        """Run one case, check its invariants (into ``violations``) and return its outcome.

        ``at = (k, action)``: call ``action()`` (register writes that race with the device)
        right after the case's ``k``-th bus transaction, or before the notify if ``k == 0``.
        This is how a race seen on the RTL is replayed: the RTL's transactions issued before
        the racing write took effect are the ``k`` the reference must make before it.
        """
        self.case = case
        dev = self.dev
        run_sync(self.drv.prepare(case))
        hook = self.extra_hook
        if at is not None:
            k_at, action = at
            count = [0]

            def race(t: Transaction) -> None:
                count[0] += 1
                if count[0] == k_at:
                    action()
            self.extra_hook = race
        used_before = dev.used_idx
        dev.clear_records()
        acc0 = dev.dma_accesses
        self.view.refresh()
        self.granted_w = set(self.view.writable)
        before = dev.mem._mem.copy()  # a cheap snapshot (numpy)
        ignored_ok = True
        if case.expect.ignored_notify:
            run_sync(self.drv.kick(case, first=True))
            ignored_ok = not dev.transactions and not dev.faults
        if at is not None and at[0] == 0:
            at[1]()
        try:
            run_sync(self.drv.kick(case, first=False))
        finally:
            self.extra_hook = hook
        fault = (dev.faults[0].cause, dev.faults[0].addr) if dev.faults else None
        completions = read_completions(dev.mem, self.w, case, used_before, dev.completed) \
            if dev.completed else []
        out = Outcome(completions, fault, list(dev.transactions), dev.translations,
                      dev.dma_accesses - acc0, ignored_ok, dev.fault_count)
        self._check_memory(before, case)
        run_sync(self.drv.finish(case, fault is not None))
        return out

    def _check_memory(self, before: Any, case: Case) -> None:
        """Nothing outside the pages granted writable during the case changed."""
        if not self.w.handle_mode:
            return
        diff = (self.dev.mem._mem != before).nonzero()[0]
        if not len(diff):
            return
        bad = set((diff >> spec.PAGE_SHIFT).tolist()) - self.granted_w
        if bad:
            self.violations.append(f"{case.describe()}: frames {sorted(bad)} changed without "
                                   "a writable grant")
