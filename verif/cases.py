"""The hostile case generators: about 25 categories, each aiming at one outcome.

Every category of issue 4 has a generator (see :data:`CATEGORIES`); each states the outcome it
aims at (:class:`verif.world.Expect`) and the tests check that the reference agrees, so that a
generator that silently stopped producing its hostile input, or a reference that silently
stopped rejecting it, is caught. Headers and ring geometry come from :mod:`models.virtio`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models import spec, virtio
from models.grant import GrantEntry
from sw.iommu import Answer, MissPolicy
from verif.choosers import Chooser
from verif.world import (
    F_DATA,
    F_DESC,
    F_QUARANTINE,
    F_SLOT,
    F_USED,
    IOVA_ALIASES,
    PAGE,
    R_AVAIL,
    R_DATA,
    R_DECERR,
    R_DESC,
    R_HOSTILE,
    R_SLOT,
    R_SPARE,
    R_USED,
    U64,
    Case,
    Expect,
    QueueSpec,
    World,
)

HDR = virtio.BLK_HEADER.size  # the virtio-blk request header (16 bytes)


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

    def buffer(self, nbytes: int, *, writable: bool, offset: int | None = None) -> int:
        """Device address of a fresh data buffer of ``nbytes``: it may start anywhere in a page
        (at ``offset`` if given) and continue into the next reference (handle mode, as Linux
        allocates consecutive references) or the next frame (GPA mode)."""
        ch, w = self.ch, self.w
        for _ in range(16):
            if offset is not None:
                off = offset
            else:
                off = ch.int(0, PAGE - 1) if ch.bool(0.6) else ch.int(0, 8) * 64
            pages = max(1, -(-(off + nbytes) // PAGE))
            if w.translated:
                avoid = w.readonly_refs if writable else w.writeonly_refs
                starts = [r for r in self.free_refs
                          if all(r + k in self.free_refs and r + k not in avoid
                                 for k in range(pages))]
                if starts:
                    r = ch.choice(starts)
                    for k in range(pages):
                        self.free_refs.remove(r + k)
                    if w.iova:  # a fresh IOVA alias of the pages
                        return w.iova_addr(r, off, ch.int(0, IOVA_ALIASES - 1))
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
        if req_type == spec.VIRTIO_BLK_T_DISCARD and w.offers(spec.VIRTIO_BLK_F_DISCARD):
            req_type = 10  # T_DISCARD is served when offered: GET_LIFETIME, not implemented
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
    header = virtio.BLK_HEADER.pack(req_type, ch.int(0, 3) * 0x10001, sector)
    slot = b.slot()
    segs: list[Seg] = []
    # header: one descriptor, split in two, or shared with readable data
    share_header = bool(not writable and data_len and odd())
    data_addr = None
    if share_header:
        buf = b.buffer(HDR + data_len, writable=False)
        b.put(buf, header)
        segs.append(Seg(buf, HDR + data_len, False))
        data_addr = buf + HDR
    else:
        b.put(slot, header)
        if odd():
            k = ch.int(1, HDR - 1)
            segs += [Seg(slot, k, False), Seg(slot + k, HDR - k, False)]
        else:
            segs.append(Seg(slot, HDR, False))
    status_addr = slot + HDR + ch.int(0, 15)
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


def _link(ch: Chooser, idx: Sequence[int], segs: Sequence[Seg]) -> list[Desc]:
    """``segs`` as one chain in descriptors ``idx`` (in order): WRITE from the segment, NEXT
    and ``next`` to the following one; the last one's ``next`` sometimes garbage."""
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
    return out


def _chain(ch: Chooser, n: int, segs: Sequence[Seg], used: set[int] | None = None
           ) -> tuple[int, list[Desc]]:
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
    return idx[0], _link(ch, idx, segs)


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


def _crossing_req(b: _CaseBuilder, write: bool, addr_at: Callable[[int], int]) -> _Req:
    """A request (T_IN for a device ``write``, else T_OUT) of 1 or 2 sectors whose data starts
    in the last bytes of a page, at device address ``addr_at(offset in the page)``, and runs into
    the next page; its header and status in a slot."""
    ch, w = b.ch, b.w
    nsec = ch.choice((1, 2))
    data_len = nsec * 512
    off = ch.int(PAGE - data_len + 1, PAGE - 1)
    req_type = spec.VIRTIO_BLK_T_IN if write else spec.VIRTIO_BLK_T_OUT
    slot = b.slot()
    b.put(slot, virtio.BLK_HEADER.pack(req_type, 0, ch.int(0, w.capacity - nsec)))
    addr = addr_at(off)
    if not write:
        b.put(addr, b.payload(data_len))
    return _Req([Seg(slot, HDR, False), Seg(addr, data_len, write), Seg(slot + 20, 1, True)],
                None)


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
    req = _crossing_req(b, write, lambda off: spec.make_handle(ref, off))
    return _assemble(ch, w, index, "run_off_grant", Expect(cause), [*pre, req], b,
                     patches=patches, note=f"ref {ref} + 1")


def gen_table_end(ch: Chooser, w: World, index: int) -> Case:
    """At the end of the grant table (``entries`` E): the last entry, E - 1, granted (a patch,
    to a quarantine frame) and the hypervisor also writing GRANT[E] and GRANT[E + 1], which lie
    past the table and must change nothing (docs/architecture.md: references from E on fault
    with cause 2 whatever was written there). Then one of:

    * ``cross``: a data buffer that starts in E - 1 and runs into E: the first page moved, cause
      2 at the second page's first byte;
    * ``past``: a data buffer in E or E + 1: cause 2, nothing moved for it;
    * ``last``: a data buffer inside E - 1, up to its last byte at times: completion."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    last = w.entries - 1
    frame = ch.choice(list(F_QUARANTINE))
    beyond = GrantEntry.permit(w.domid, ch.choice(list(F_QUARANTINE)))
    patches = [(last, GrantEntry.permit(w.domid, frame)), (last + 1, beyond),
               (last + 2, beyond)]
    what = ch.choice(("cross", "cross", "past", "last"))
    write = ch.bool()
    nsec = ch.choice((1, 2))
    data_len = nsec * 512
    if what == "cross":
        addr = spec.make_handle(last, ch.int(PAGE - data_len + 1, PAGE - 1))
        expect = Expect(spec.FAULT_REF_RANGE)
    elif what == "past":
        addr = spec.make_handle(ch.choice((last + 1, last + 2)), ch.int(0, PAGE - data_len))
        expect = Expect(spec.FAULT_REF_RANGE)
    else:
        off = ch.choice((PAGE - data_len, ch.int(0, PAGE - data_len)))
        addr = spec.make_handle(last, off)
        expect = Expect(0)
    req_type = spec.VIRTIO_BLK_T_IN if write else spec.VIRTIO_BLK_T_OUT
    slot = b.slot()
    b.put(slot, virtio.BLK_HEADER.pack(req_type, 0, ch.int(0, w.capacity - nsec)))
    b.put(slot + 20, b"\xa5")
    segs = [Seg(slot, HDR, False), Seg(addr, data_len, write), Seg(slot + 20, 1, True)]
    status = spec.VIRTIO_BLK_S_OK if what == "last" else None
    return _assemble(ch, w, index, "table_end", expect, [*pre, _Req(segs, status)], b,
                     patches=patches,
                     note=f"{what} {'in' if write else 'out'} at {addr & (1 << 63) - 1:#x}")


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
        if w.translated:  # inside one page: no later translation fault hides the error
            addr = w.dma(R_DECERR, 0, min(s.addr & 0xFFF, max(0, PAGE - s.len)))
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
    b.put(slot, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_FLUSH, 0, 0))
    order = list(range(n))
    random.Random(ch.seed()).shuffle(order)
    descs = []
    for k, i in enumerate(order):
        writable = k >= n // 2 or n == 1
        addr = slot if not writable else slot + HDR + k
        ln = HDR if k == 0 else (0 if not writable else 1)
        nxt = order[k + 1] if k + 1 < n else order[ch.int(0, n - 1)]
        descs.append((i, addr, ln, (spec.VIRTQ_DESC_F_WRITE if writable else 0)
                      | spec.VIRTQ_DESC_F_NEXT, nxt))
    return Case(index, "chain_too_long", Expect(spec.FAULT_BAD_CHAIN), q, descs=descs,
                heads=[order[0]], writes=b.writes, note=f"N={n}")


def gen_indirect(ch: Chooser, w: World, index: int) -> Case:
    """VIRTQ_DESC_F_INDIRECT on any descriptor of a good chain, INDIRECT_DESC not negotiated
    (cause 7)."""
    def mutate(descs, n):
        k = ch.int(0, len(descs) - 1)
        i, a, ln, fl, nx = descs[k]
        descs[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_INDIRECT, nx)
    case = _chain_case(ch, w, index, "indirect", spec.FAULT_BAD_CHAIN, mutate)
    case.features = w.negotiate & ~(1 << spec.VIRTIO_F_INDIRECT_DESC)  # never negotiated
    return case


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
        descs.append((j, descs[0][1], HDR, 0, 0))
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
        b.put(slot, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_FLUSH, 0, 0))
        b.put(slot + HDR, bytes(n))
        segs = [Seg(slot, HDR, False)] + [Seg(0, 0, False)] * (n // 2 - 1) \
            + [Seg(slot + HDR + k, 1 if k == n - n // 2 - 1 else 0, True)
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
    ring = virtio.SplitRing(n)
    offs = tuple(ch.int(0, (PAGE - size) // align) * align for size, align in (
        (ring.desc_bytes, ring.DESC_ALIGN), (ring.avail_bytes, ring.AVAIL_ALIGN),
        (ring.used_bytes, ring.USED_ALIGN)))
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


# --- IOVA mode (docs/iotlb.md): the IOMMU's mappings and the hypervisor's answers -------------


def _any_alias(ch: Chooser) -> int:
    return ch.int(0, IOVA_ALIASES - 1)


def _unmapped_refs(w: World) -> list[int]:
    return [r for r in (*R_HOSTILE, *R_SPARE) if w.iova_page(r) not in w.iova_map]


def gen_iova_unmapped(ch: Chooser, w: World, index: int) -> Case:
    """A header, data or status address in an IOVA page the guest never mapped, or a ring
    page unmapped: the hypervisor fails the miss (cause 10)."""
    cause = spec.FAULT_IOTLB_FAILED
    if ch.bool(0.2):
        b = _CaseBuilder(ch, w)
        reqs = [*_with_pre(ch, b), _good_request(b)]
        ref = ch.choice((R_USED, R_AVAIL, R_DESC))
        return _assemble(ch, w, index, "iova_unmapped", Expect(cause), reqs, b,
                         iova_patches=[(w.iova_page(ref), None)], note=f"ring page {ref} unmapped")
    bad = _unmapped_refs(w)
    return _data_fault(ch, w, index, "iova_unmapped", cause,
                       lambda s: w.iova_addr(ch.choice(bad), s.addr & 0xFFF, _any_alias(ch)))


def gen_iova_run_off_map(ch: Chooser, w: World, index: int) -> Case:
    """A buffer whose mapping ends inside it: the next IOVA page is unmapped (cause 10), or
    mapped without the permission the access needs (5 for a device write, 11 for a read).
    The first page is moved; nothing of the second is touched."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    write = ch.bool()
    avoid = w.readonly_refs if write else w.writeonly_refs
    cands = [r for r in R_DATA if r + 1 in R_DATA and r in b.free_refs
             and r + 1 in b.free_refs and r not in avoid]
    ref = ch.choice(cands)
    b.free_refs.remove(ref)
    b.free_refs.remove(ref + 1)
    alias = _any_alias(ch)
    page = w.iova_page(ref + 1, alias)
    if ch.bool(0.6):
        patch, cause, how = None, spec.FAULT_IOTLB_FAILED, "unmapped"
    else:
        frame = w.data_frame[ref + 1]
        patch = (frame, True, False) if write else (frame, False, True)
        cause = spec.FAULT_READONLY if write else spec.FAULT_IOTLB_NO_READ
        how = "read-only" if write else "write-only"
    req = _crossing_req(b, write, lambda off: w.iova_addr(ref, off, alias))
    return _assemble(ch, w, index, "iova_run_off_map", Expect(cause), [*pre, req], b,
                     iova_patches=[(page, patch)], note=f"page {page:#x} {how}")


def gen_iova_readonly(ch: Chooser, w: World, index: int) -> Case:
    """A device write (T_IN data, the status byte) through a read-only mapping: cause 5 at
    once, no address out."""
    ro = sorted(w.readonly_refs)
    if ch.bool(0.3):
        b = _CaseBuilder(ch, w)
        pre = _with_pre(ch, b)
        req = _good_request(b, kinds=("flush", "out", "in"))
        s = req.segs[req.last]
        req.segs[req.last] = Seg(w.iova_addr(ch.choice(ro), ch.int(0, max(0, PAGE - s.len)),
                                             _any_alias(ch)), s.len, True)
        return _assemble(ch, w, index, "iova_readonly", Expect(spec.FAULT_READONLY),
                         [*pre, req], b, note="status byte in a read-only mapping")
    return _data_fault(ch, w, index, "iova_readonly", spec.FAULT_READONLY,
                       lambda s: w.iova_addr(ch.choice(ro), s.addr & 0xFFF, _any_alias(ch)),
                       writable=True)


def gen_iova_writeonly(ch: Chooser, w: World, index: int) -> Case:
    """A device read (T_OUT data, the header) through a write-only mapping: cause 11 at
    once, no address out."""
    wo = sorted(w.writeonly_refs)
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    req = _good_request(b, kinds=("out", "out", "flush", "in"))
    readable = [k for k, s in enumerate(req.segs) if s.len and not s.write]
    i = ch.choice(readable)
    s = req.segs[i]
    req.segs[i] = Seg(w.iova_addr(ch.choice(wo), s.addr & 0xFFF, _any_alias(ch)), s.len, False)
    return _assemble(ch, w, index, "iova_writeonly", Expect(spec.FAULT_IOTLB_NO_READ),
                     [*pre, req], b, note=f"desc #{i} in a write-only mapping")


def _data_page(w: World, req: _Req) -> int:
    """The IOVA page of the first data byte of ``req`` (a page no other request uses)."""
    slots = {w.iova_page(r) for r in R_SLOT}
    for seg in req.segs:
        page = (seg.addr & U64) >> spec.PAGE_SHIFT
        if seg.len and page not in slots:
            return page
    raise ValueError("the request has no data buffer")


def _policy_case(ch: Chooser, w: World, index: int, category: str, policy: MissPolicy,
                 expect: Expect, note: str) -> Case:
    """The IOTLB flushed, then a request whose data page's miss the hypervisor answers with
    ``policy`` (every other miss mapped at once)."""
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    req = _good_request(b, kinds=("in", "out"))
    page = _data_page(w, req)
    if expect.cause == 0 and not expect.stalls:
        expect = Expect(0, tuple(r.status for r in (*pre, req)))
    return _assemble(ch, w, index, category, expect, [*pre, req], b, flush=True,
                     policies={page: policy}, note=f"page {page:#x}: {note}")


def gen_iova_fail(ch: Chooser, w: World, index: int) -> Case:
    """The hypervisor fails the miss of a mapped page (MISS_RESOLVE = 2): cause 10."""
    return _policy_case(ch, w, index, "iova_fail", MissPolicy(Answer.FAIL,
                        latency=ch.choice((0, 0, 40))), Expect(spec.FAULT_IOTLB_FAILED), "fail")


def gen_iova_never(ch: Chooser, w: World, index: int) -> Case:
    """The hypervisor never answers a miss; its timeout fails it: cause 10."""
    t = ch.choice((60, 300, 1500))
    return _policy_case(ch, w, index, "iova_never", MissPolicy(Answer.NEVER, timeout=t),
                        Expect(spec.FAULT_IOTLB_FAILED), f"never, failed after {t}")


def gen_iova_late(ch: Chooser, w: World, index: int) -> Case:
    """Every miss answered late (up to thousands of cycles): the requests complete."""
    lat = ch.choice((20, 150, 600, 2500))
    b = _CaseBuilder(ch, w)
    reqs = _good_batch(ch, b, ch.choice((1, 2, 3)))
    return _assemble(ch, w, index, "iova_late", Expect(0, tuple(r.status for r in reqs)), reqs,
                     b, flush=ch.bool(0.7), policy=MissPolicy(latency=lat),
                     note=f"latency {lat}")


def gen_iova_reset_miss(ch: Chooser, w: World, index: int) -> Case:
    """The driver resets the device while a miss of the last request is pending (the
    hypervisor never answers it): the miss is cancelled (IOTLB_MISS reads 0, hv_irq falls),
    no fault, the IOTLB keeps its entries."""
    return _policy_case(ch, w, index, "iova_reset_miss", MissPolicy(Answer.NEVER),
                        Expect(0, (), stalls=True), "reset while pending")


def gen_iova_pressure(ch: Chooser, w: World, index: int) -> Case:
    """Three or four requests whose data pages (fresh IOVA aliases) all fall in one IOTLB set
    (small sets: IOVA bits above 12): more pages than the set's ways, so inserts evict (round
    robin) and pages miss again; every request completes."""
    b = _CaseBuilder(ch, w)
    n_sets = w.iotlb_entries // spec.IOTLB_WAYS
    target = ch.int(0, n_sets - 1)
    cands = [(r, k) for k in range(IOVA_ALIASES) for r in R_DATA
             if w.iova_page(r, k) % n_sets == target]
    picks: list[tuple[int, int]] = []
    for r, k in sorted(cands, key=lambda _: ch.int(0, 1 << 16)):
        if r not in [p[0] for p in picks]:
            picks.append((r, k))
    reqs = []
    for r, k in picks[:ch.choice((3, 4))]:
        b.free_refs.remove(r)
        write = r in w.writeonly_refs or (r not in w.readonly_refs and ch.bool())
        nsec = 1
        slot = b.slot()
        req_type = spec.VIRTIO_BLK_T_IN if write else spec.VIRTIO_BLK_T_OUT
        b.put(slot, virtio.BLK_HEADER.pack(req_type, 0, ch.int(0, w.capacity - nsec)))
        addr = w.iova_addr(r, ch.int(0, PAGE - 512 * nsec), k)
        if not write:
            b.put(addr, b.payload(512 * nsec))
        b.put(slot + 20, b"\xa5")
        reqs.append(_Req([Seg(slot, HDR, False), Seg(addr, 512 * nsec, write),
                          Seg(slot + 20, 1, True)], spec.VIRTIO_BLK_S_OK))
    return _assemble(ch, w, index, "iova_pressure", Expect(0, tuple(r.status for r in reqs)),
                     reqs, b, flush=ch.bool(0.2), note=f"{len(reqs)} pages in set {target}")

# --- issue 17: indirect tables, EVENT_IDX, limits, DISCARD and WRITE_ZEROES ---------------------
# Each generator states the outcome from docs/architecture.md ("Ring engine", virtio 1.2
# sections 2.7.5.3, 2.7.10, 5.2.6), the reference is checked against it, and the RTL against the
# reference.

IND = spec.VIRTQ_DESC_F_INDIRECT
F_INDIRECT = 1 << spec.VIRTIO_F_INDIRECT_DESC
F_EVENT_IDX = 1 << spec.VIRTIO_RING_F_EVENT_IDX
Desc = tuple[int, int, int, int, int]


def _ring_features(ch: Chooser, w: World, need: int = 0, *, drop: int = 0) -> int:
    """The issue 17 ring features a case negotiates: ``need``, plus INDIRECT_DESC and
    EVENT_IDX at random, minus ``drop``."""
    extra = (F_INDIRECT if ch.bool() else 0) | (F_EVENT_IDX if ch.bool() else 0)
    return (need | extra) & ~drop & w.offered


def _lay_table(b: _CaseBuilder, segs: Sequence[Seg], *, extra: int = 0,
               sequential: bool = False, addr: int | None = None) -> tuple[int, list[Desc]]:
    """An indirect table holding ``segs`` as one chain from entry 0 (section 2.7.5.3.1: the
    walk starts at the table's first entry), in shuffled entries (``sequential``: in order),
    plus ``extra`` entries of garbage no chain reaches; written at ``addr`` (default: a fresh
    readable buffer, anywhere in a page). Returns the table's address and its entries."""
    ch = b.ch
    t = len(segs) + extra
    rest = list(range(1, t))
    if not sequential:
        random.Random(ch.seed()).shuffle(rest)
    idx = [0, *rest[:len(segs) - 1]]
    entries = _link(ch, idx, segs)
    junk = random.Random(ch.seed())
    for j in sorted(set(range(t)) - set(idx)):
        entries.append((j, junk.getrandbits(64), junk.getrandbits(32), junk.getrandbits(16),
                        junk.getrandbits(16)))
    if addr is None:
        addr = b.buffer(16 * t, writable=False)
    table = bytearray(16 * t)
    for i, a, ln, fl, nx in entries:
        table[16 * i:16 * i + 16] = virtio.DESC.pack(a, ln, fl, nx)
    b.put(addr, bytes(table))
    return addr, entries


def _indirect(b: _CaseBuilder, req: _Req, *, direct: int | None = None, **kw: Any
              ) -> tuple[_Req, tuple[int, list[Desc]]]:
    """``req`` with its last descriptors moved into an indirect table: ``direct`` (default:
    mostly none, sometimes one or two) stay in the ring in front of the indirect descriptor,
    whose WRITE flag is set at times (the device ignores it)."""
    ch = b.ch
    if direct is None:
        direct = min(ch.choice((0, 0, 0, 1, 2)), len(req.segs) - 1)
    inner = req.segs[direct:]
    kw.setdefault("extra", ch.choice((0, 0, 1, 3)))
    addr, entries = _lay_table(b, inner, **kw)
    ind = Seg(addr, 16 * len(entries), ch.bool(0.3), IND)
    return _Req([*req.segs[:direct], ind], req.status), (addr, entries)


def _table_chain(entries: list[Desc]) -> list[int]:
    """Positions in ``entries`` of the chain from table entry 0, in chain order."""
    pos = {e[0]: k for k, e in enumerate(entries)}
    out, i = [], 0
    while i in pos and pos[i] not in out:
        out.append(pos[i])
        if not entries[pos[i]][3] & spec.VIRTQ_DESC_F_NEXT:
            break
        i = entries[pos[i]][4]
    return out


def _maybe_indirect(b: _CaseBuilder, reqs: list[_Req], feats: int, p: float = 0.5
                    ) -> tuple[list[_Req], list[tuple[int, list[Desc]]]]:
    """With INDIRECT_DESC negotiated, each request through a table with probability ``p``."""
    out, tables = [], []
    for r in reqs:
        if feats & F_INDIRECT and b.ch.bool(p):
            r, t = _indirect(b, r)
            tables.append(t)
        out.append(r)
    return out, tables


def gen_indirect_ok(ch: Chooser, w: World, index: int) -> Case:
    """Well-formed requests through indirect tables (INDIRECT_DESC negotiated): tables at any
    offset, crossing a page boundary into a good page, in a read-only grant or mapping (the
    device only reads a table), with unused garbage entries, direct descriptors in front of
    the indirect one, the indirect descriptor's WRITE flag set (ignored); mixed with direct
    requests. Every request completes with its status."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w, F_INDIRECT)
    where = ch.choice(("any", "any", "cross", "readonly"))
    if where == "readonly" and not w.translated:
        where = "cross"
    first = _good_request(b)
    kw: dict[str, Any] = {}
    if where == "cross":
        t = len(first.segs) + 1
        off = ch.int(PAGE - 16 * t + 1, PAGE - 1)
        kw = {"addr": b.buffer(16 * t, writable=False, offset=off), "extra": 1}
    elif where == "readonly":
        ro = [r for r in sorted(w.readonly_refs) if r in b.free_refs]
        ref = ch.choice(ro)
        b.free_refs.remove(ref)
        off = ch.int(0, PAGE - 16 * (len(first.segs) + 3))
        kw = {"addr": w.iova_addr(ref, off, _any_alias(ch)) if w.iova
              else spec.make_handle(ref, off)}
    req, table = _indirect(b, first, **kw)
    more, tables = _maybe_indirect(b, _good_batch(ch, b, ch.choice((0, 0, 1, 2))), feats)
    reqs = [req, *more]
    if ch.bool():
        reqs.reverse()
    return _assemble(ch, w, index, "indirect_ok", Expect(0), reqs, b, features=feats,
                     tables=[table, *tables], note=f"table {where}")


def gen_indirect_bad(ch: Chooser, w: World, index: int) -> Case:
    """A malformed indirect descriptor or table (cause 7, docs "Ring engine" step 3.2): length
    0, not a multiple of 16 or more than 16 N; INDIRECT with NEXT; INDIRECT inside a table; a
    ``next`` outside the table; a loop inside the table; ``addr + len`` past 2**64; a good
    table while INDIRECT_DESC is not negotiated. The fault address is the descriptor's index
    (in the ring, or in the table)."""
    what = ch.choice(("len0", "len_odd", "len_odd", "len_big", "next", "nested", "outside",
                      "loop", "wrap", "not_negotiated"))
    b = _CaseBuilder(ch, w)
    pre = _with_pre(ch, b)
    feats = _ring_features(ch, w, F_INDIRECT)
    if what == "not_negotiated":
        feats = _ring_features(ch, w, drop=F_INDIRECT)
    req, (taddr, entries) = _indirect(b, _good_request(b, kinds=("in", "out", "flush",
                                                                "get_id")))
    n = w.queue_size
    t = len(entries)
    chain = _table_chain(entries)  # positions in ``entries``, in chain order
    addr: int | None = None  # the fault address, when the table decides it
    if what == "nested":
        k = ch.choice(chain)
        i, a, ln, fl, nx = entries[k]
        if ch.bool():  # a well-formed indirect descriptor but for being in a table
            ln, fl = 16 * ch.int(1, 4), fl & ~spec.VIRTQ_DESC_F_NEXT
        entries[k] = (i, a, ln, fl | IND, nx)
        addr = i
    elif what == "outside":
        k = ch.choice(chain)
        i, a, ln, fl, _ = entries[k]
        addr = ch.choice((t, t + 1, n, 0xFFFF))
        entries[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_NEXT, addr)
    elif what == "loop":  # the chain's last entry links back into it: descriptor N + 1
        k = chain[-1]
        i, a, ln, fl, _ = entries[k]
        entries[k] = (i, a, ln, fl | spec.VIRTQ_DESC_F_NEXT,
                      entries[ch.choice(chain)][0])
    if what in ("nested", "outside", "loop"):
        table = bytearray(16 * t)
        for i, a, ln, fl, nx in entries:
            table[16 * i:16 * i + 16] = virtio.DESC.pack(a, ln, fl, nx)
        b.put(taddr, bytes(table))
    case = _assemble(ch, w, index, "indirect_bad", Expect(spec.FAULT_BAD_CHAIN), [*pre, req], b,
                     features=feats, tables=[(taddr, entries)], note=what)
    k = next(j for j, d in enumerate(case.descs) if d[3] & IND)
    i, a, ln, fl, nx = case.descs[k]
    if what == "len0":
        ln = 0
    elif what == "len_odd":
        # mostly above 16 (a whole entry or more, the rest a partial one), at times below
        ln = ch.choice((ln + ch.int(1, 15), ln - ch.int(1, 15), ln + ch.int(1, 15), 17, 8))
    elif what == "len_big":
        ln = ch.choice((16 * n + 16, 32 * n, 0xFFFF_FFF0))
    elif what == "next":
        free = [j for j in range(n) if j not in {d[0] for d in case.descs}]
        fl, nx = fl | spec.VIRTQ_DESC_F_NEXT, ch.choice(free or [i])
    elif what == "wrap":  # addr + len past 2**64
        a = (1 << 64) - ch.int(1, ln - 1)
    case.descs[k] = (i, a & U64, ln, fl, nx)
    if what in ("len0", "len_odd", "len_big", "next", "wrap", "not_negotiated"):
        addr = i
    case.expect = Expect(spec.FAULT_BAD_CHAIN, fault_addr=addr)
    return case


def _hostile_table_addr(ch: Chooser, w: World, b: _CaseBuilder, nbytes: int
                        ) -> tuple[int, int, list[tuple[str, int]], list, str]:
    """An address for an indirect table the device cannot read, the cause it gives, bus errors
    to set (GPA mode) and IOVA page changes; and what it is."""
    if w.handle_mode:
        what = ch.choice(("invalid", "domain", "outside", "gpa"))
        if what == "invalid":
            ref = ch.choice((40, 41, 42, 43, 47, ch.int(56, w.entries - 1)))
            return spec.make_handle(ref, ch.int(0, PAGE - nbytes)), \
                spec.FAULT_NOT_PERMITTED, [], [], f"ref {ref}"
        if what == "domain":
            return spec.make_handle(ch.choice((44, 45)), ch.int(0, PAGE - nbytes)), \
                spec.FAULT_WRONG_DOMAIN, [], [], what
        if what == "outside":
            return spec.make_handle(ch.choice((w.entries, w.entries + 7)), 0), \
                spec.FAULT_REF_RANGE, [], [], what
        return F_DATA[0] << 12, spec.FAULT_NOT_HANDLE, [], [], what
    if w.iova:
        if ch.bool(0.4) and w.writeonly_refs:
            ref = ch.choice(sorted(w.writeonly_refs))
            if ref in b.free_refs:
                b.free_refs.remove(ref)
            return w.iova_addr(ref, ch.int(0, PAGE - nbytes), _any_alias(ch)), \
                spec.FAULT_IOTLB_NO_READ, [], [], "write-only mapping"
        return w.iova_addr(ch.choice(_unmapped_refs(w)), ch.int(0, PAGE - nbytes)), \
            spec.FAULT_IOTLB_FAILED, [], [], "unmapped"
    addr = b.buffer(nbytes, writable=False, offset=ch.int(0, PAGE - nbytes))
    return addr, spec.FAULT_BUS_ERROR, [("R", addr)], [], "bus error"


def gen_indirect_fault(ch: Chooser, w: World, index: int) -> Case:
    """An indirect table the device may not read: in a page not granted (or another domain's,
    outside the table, not a handle), not mapped or mapped write-only (IOVA), answering with a
    bus error (GPA); or a table that starts in a good page and crosses into such a page, the
    chain reaching the entries beyond it. The cause of that page's translation; nothing of
    the table's bad page is read."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w, F_INDIRECT)
    errors: list[tuple[str, int]] = []
    cross = None
    if w.translated and ch.bool(0.4):
        # crossing: the entries from the page boundary on are in the next, bad page (the
        # references are reserved before any buffer is allocated)
        cands = []
        for r in R_DATA:
            if r + 1 not in R_DATA and not (w.iova and r in w.writeonly_refs):
                cands.append((r, spec.FAULT_NOT_PERMITTED if w.handle_mode
                              else spec.FAULT_IOTLB_FAILED))
            if w.iova and r + 1 in w.writeonly_refs and r not in w.writeonly_refs:
                cands.append((r, spec.FAULT_IOTLB_NO_READ))
        if cands:
            cross = ch.choice(cands)
            for r in (cross[0], cross[0] + 1):
                if r in b.free_refs:
                    b.free_refs.remove(r)
    pre = _with_pre(ch, b)
    first = _good_request(b, kinds=("in", "out", "flush"))
    t = len(first.segs) + ch.choice((0, 1))
    if cross is not None:
        ref, cause = cross
        off = ch.int(PAGE - 16 * (len(first.segs) - 1), PAGE - 1)
        addr = w.iova_addr(ref, off) if w.iova else spec.make_handle(ref, off)
        what = f"crossing from ref {ref}"
        req, table = _indirect(b, first, direct=0, addr=addr, sequential=True,
                               extra=t - len(first.segs))
    else:
        addr, cause, errors, _, what = _hostile_table_addr(ch, w, b, 16 * t)
        req, table = _indirect(b, first, addr=addr, extra=t - len(first.segs))
    if errors:
        pre = []  # the rings may share nothing with the failing page, but keep it simple
    return _assemble(ch, w, index, "indirect_fault", Expect(cause), [*pre, req], b,
                     features=feats, tables=[table], errors=errors, note=what)


def _need_event(event: int, new: int, old: int) -> bool:
    """Linux's ``vring_need_event`` (virtio 1.2 section 2.7.10)."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def gen_event_idx(ch: Chooser, w: World, index: int) -> Case:
    """EVENT_IDX negotiated, on a freshly reset device: one to three good requests (through
    indirect tables at times) and a ``used_event`` around the used index and the 16-bit wrap;
    ``avail.flags`` NO_INTERRUPT at random (ignored under EVENT_IDX). InterruptStatus bit 0
    after the round is ``vring_need_event(used_event, k, 0)`` for ``k`` completions."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w, F_EVENT_IDX)
    reqs, tables = _maybe_indirect(b, _good_batch(ch, b, ch.choice((1, 1, 2, 3))), feats, 0.3)
    k = len(reqs)
    event = ch.choice((k - 1, k - 1, k, k + 1, 0, 0xFFFF, k - 2, 0x8000, k + 0x7FFF,
                       ch.int(0, 0xFFFF))) & 0xFFFF
    case = _assemble(ch, w, index, "event_idx", Expect(0), reqs, b, features=feats,
                     tables=tables, fresh=True, used_event=event, note=f"used_event {event}")
    case.avail_flags = spec.VIRTQ_AVAIL_F_NO_INTERRUPT if ch.bool() else 0
    case.expect = Expect(0, case.expect.statuses, interrupt=_need_event(event, len(case.heads),
                                                                       0))
    return case


def gen_event_fault(ch: Chooser, w: World, index: int) -> Case:
    """EVENT_IDX negotiated, the ring placed so that ``used_event`` (after the avail ring) or
    ``avail_event`` (after the used ring) is the first bytes of the next page, a page the
    device may not use that way: not granted, read-only for the ``avail_event`` write, not
    mapped or mapped write-only for the ``used_event`` read (IOVA), a bus error (GPA). The
    requests complete; then the device faults with that page's cause on the event word, and
    makes no other access to that page."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w, F_EVENT_IDX)
    field = ch.choice(("used_event", "avail_event"))
    write = field == "avail_event"
    q = w.standard_queue()
    n = q.n
    ring = virtio.SplitRing(n)
    size = ring.used_event if not write else ring.avail_event
    errors: list[tuple[str, int]] = []
    if w.translated:
        cands = []
        for r in R_DATA:
            if r not in b.free_refs or (write and r in w.readonly_refs) \
                    or (not write and r in w.writeonly_refs):
                continue
            if r + 1 not in R_DATA:
                cands.append((r, spec.FAULT_NOT_PERMITTED if w.handle_mode
                              else spec.FAULT_IOTLB_FAILED))
            elif write and r + 1 in w.readonly_refs:
                cands.append((r, spec.FAULT_READONLY))
            elif not write and r + 1 in w.writeonly_refs:
                cands.append((r, spec.FAULT_IOTLB_NO_READ))
        ref, cause = ch.choice(cands)
        for r in (ref, ref + 1):
            if r in b.free_refs:
                b.free_refs.remove(r)
        base = w.iova_addr(ref, PAGE - size) if w.iova else spec.make_handle(ref, PAGE - size)
        note = f"{field} in ref {ref + 1}"
    else:
        starts = [f for f in b.free_frames if f + 1 in b.free_frames]
        f = ch.choice(starts)
        b.free_frames.remove(f)
        b.free_frames.remove(f + 1)
        base = f << spec.PAGE_SHIFT | (PAGE - size)
        errors = [("W" if write else "R", (f + 1) << spec.PAGE_SHIFT)]
        cause = spec.FAULT_BUS_ERROR
        note = f"{field} in frame {f + 1} (bus error)"
    q = QueueSpec(n, q.desc, q.avail if write else base, base if write else q.used)
    reqs, tables = _maybe_indirect(b, _good_batch(ch, b, ch.choice((1, 1, 2))), feats, 0.3)
    return _assemble(ch, w, index, "event_fault", Expect(cause), reqs, b, queue=q,
                     features=feats, tables=tables, errors=errors,
                     used_event=ch.int(0, 0xFFFF), note=note)


def gen_ring_straddle(ch: Chooser, w: World, index: int) -> Case:
    """The avail ring and the used ring each placed 4 bytes before a page's end: their flags
    and index in one page, every entry (and the event words) in the next, two pages with
    frames of their own. Each head and used element is read or written through the second
    page's translation, which the ring engine forms a cycle ahead (the early address, issue
    16), never through the first's. The requests complete."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w)
    q = w.standard_queue()
    bases = []
    for write in (False, True):
        if w.translated:
            avoid = w.readonly_refs if write else w.writeonly_refs
            cands = [r for r in R_DATA if r + 1 in R_DATA and r in b.free_refs
                     and r + 1 in b.free_refs and r not in avoid and r + 1 not in avoid]
            ref = ch.choice(cands)
            b.free_refs.remove(ref)
            b.free_refs.remove(ref + 1)
            bases.append(w.iova_addr(ref, PAGE - 4) if w.iova
                         else spec.make_handle(ref, PAGE - 4))
        else:
            f = ch.choice([f for f in b.free_frames if f + 1 in b.free_frames])
            b.free_frames.remove(f)
            b.free_frames.remove(f + 1)
            bases.append(f << spec.PAGE_SHIFT | (PAGE - 4))
    q = QueueSpec(q.n, q.desc, bases[0], bases[1])
    reqs, tables = _maybe_indirect(b, _good_batch(ch, b, ch.choice((1, 2, 3))), feats, 0.3)
    return _assemble(ch, w, index, "ring_straddle", Expect(0), reqs, b, queue=q,
                     features=feats, tables=tables,
                     note=f"avail {bases[0]:#x}, used {bases[1]:#x}")


def _garbage_seg(ch: Chooser, w: World, length: int) -> Seg:
    """A device-readable descriptor the device must never touch (a T_FLUSH's data, or any
    descriptor of a request over the limits): a hostile address that does not wrap."""
    hostile = [0, 1 << 63, (1 << 63) - PAGE, (F_DATA[0] << 12) + 8]
    if w.handle_mode:
        hostile += [spec.make_handle(ch.choice(list(R_HOSTILE)), 0),
                    spec.make_handle(w.entries, 0x10)]
    elif w.iova:
        hostile += [w.iova_addr(ch.choice(_unmapped_refs(w)), 0)]
    else:
        hostile += [w.mem_bytes + 0x40, 1 << 40]
    a = ch.choice(hostile)
    return Seg(min(a, (1 << 64) - max(length, 1)), length, False)


def gen_limits(ch: Chooser, w: World, index: int) -> Case:
    """SEG_MAX and SIZE_MAX as the build announces them (docs "Ring engine" step 3.3): a
    chain of more than ``seg_max + 2`` descriptors, directly or in an indirect table, or a
    descriptor longer than ``size_max`` (the header's, a data descriptor at a hostile address,
    a T_IN's data): IOERR with nothing moved, never a fault; at exactly the limit, a T_FLUSH
    completes OK (its extra descriptors, at hostile addresses, are never touched)."""
    b = _CaseBuilder(ch, w)
    seg_max, size_max = w.seg_max, w.features.size_max
    n_min = seg_max + 3
    can_segs = bool(seg_max) and n_min <= w.queue_num_max
    what = ch.choice(("segs", "segs", "size", "size")) if can_segs and size_max else \
        "segs" if can_segs else "size" if size_max else "none"
    at_limit = ch.bool(0.3)
    feats = _ring_features(ch, w)
    slot = b.slot()
    ioerr, ok = spec.VIRTIO_BLK_S_IOERR, spec.VIRTIO_BLK_S_OK
    status = ok if at_limit else ioerr
    req_type = spec.VIRTIO_BLK_T_FLUSH
    q = None
    tables: list[tuple[int, list[Desc]]] = []
    if what == "segs":
        count = seg_max + 2 if at_limit else ch.choice((seg_max + 3, seg_max + 3, seg_max + 4))
        n = 1
        while n < count:
            n *= 2
        count = ch.choice((count, n)) if not at_limit else count  # up to the whole queue
        q = w.standard_queue(n)
        segs = [Seg(slot, HDR, False)]
        segs += [_garbage_seg(ch, w, ch.choice((0, 0, 1, 16, 512))) for _ in range(count - 2)]
        segs.append(Seg(slot + HDR + 4, 1, True))
        req = _Req(segs, status)
        if feats & F_INDIRECT and ch.bool():
            req, t = _indirect(b, req, direct=ch.choice((0, 1)), extra=0)
            tables.append(t)
        note = f"{count} descriptors, seg_max {seg_max}, N {n}"
    elif what == "size":
        ln = size_max if at_limit else size_max + ch.choice((1, 15, 512, 0x10000))
        where = ch.choice(("data", "data", "header", "in"))
        if where == "header" and not at_limit:
            segs = [Seg(slot, ln, False), Seg(slot + HDR + 4, 1, True)]
        elif where == "in" and not at_limit:
            req_type = spec.VIRTIO_BLK_T_IN
            g = _garbage_seg(ch, w, ln)
            segs = [Seg(slot, HDR, False), Seg(g.addr, ln, True), Seg(slot + HDR + 4, 1, True)]
        else:
            where = "data"
            segs = [Seg(slot, HDR, False), _garbage_seg(ch, w, ln), Seg(slot + HDR + 4, 1, True)]
        req = _Req(segs, status)
        if feats & F_INDIRECT and ch.bool(0.3):
            req, t = _indirect(b, req)
            tables.append(t)
        note = f"{where} descriptor of {ln} bytes, size_max {size_max}"
    else:  # neither limit offered: a long T_FLUSH completes
        req = _Req([Seg(slot, HDR, False), _garbage_seg(ch, w, 0x20000),
                    Seg(slot + HDR + 4, 1, True)], ok)
        note = "no limit offered"
    b.put(slot, virtio.BLK_HEADER.pack(req_type, 0, ch.int(0, w.capacity - 1)))
    b.put(slot + HDR + 4, b"\xa5")
    return _assemble(ch, w, index, "limits", Expect(0), [req], b, queue=q, features=feats,
                     tables=tables, note=note)


def _dwz_status(w: World, req_type: int, seg_bytes: int, sector: int, num: int, flags: int
                ) -> int:
    """The status of a DISCARD or WRITE_ZEROES request (docs "Ring engine" step 3.5)."""
    discard = req_type == spec.VIRTIO_BLK_T_DISCARD
    if not w.offers(spec.VIRTIO_BLK_F_DISCARD if discard else spec.VIRTIO_BLK_F_WRITE_ZEROES):
        return spec.VIRTIO_BLK_S_UNSUPP
    if seg_bytes != spec.DWZ_SEGMENT_BYTES:
        return spec.VIRTIO_BLK_S_IOERR
    if num > spec.dwz_max_sectors(w.disk_bytes):
        return spec.VIRTIO_BLK_S_IOERR
    if (sector + num) * spec.SECTOR_SIZE > w.disk_bytes:
        return spec.VIRTIO_BLK_S_IOERR
    if flags & ~spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
        return spec.VIRTIO_BLK_S_UNSUPP
    if discard and flags & spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
        return spec.VIRTIO_BLK_S_UNSUPP
    return spec.VIRTIO_BLK_S_OK


def _read_back(b: _CaseBuilder, sector: int) -> _Req:
    """A T_IN of one sector (the disk after the requests before it in the case)."""
    slot = b.slot()
    b.put(slot, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_IN, 0, sector))
    buf = b.buffer(spec.SECTOR_SIZE, writable=True)
    b.put(slot + HDR + 4, b"\xa5")
    return _Req([Seg(slot, HDR, False), Seg(buf, spec.SECTOR_SIZE, True),
                 Seg(slot + HDR + 4, 1, True)], spec.VIRTIO_BLK_S_OK)


def gen_discard_zeroes(ch: Chooser, w: World, index: int) -> Case:
    """T_DISCARD or T_WRITE_ZEROES (virtio 1.2 section 5.2.6.2) with one segment
    ``{le64 sector, le32 num_sectors, le32 flags}``, or a hostile one: segment bytes 0, not a
    multiple of 16, two segments; flags unknown, UNMAP on a DISCARD; a range past the disk
    (sector values that wrap 64 bits too), ``num_sectors`` over the maximum, 0. The segment
    alone, split over two descriptors or sharing the header's. The status the specification
    gives (or, at times in the translated modes, the status byte in a read-only grant or
    mapping: cause 5); an accepted range reads as zeros afterwards, and a T_IN of its first and last
    sectors (or of sector 0) in the same notify brings the disk into guest memory, compared
    with the reference's. A T_OUT into the range comes first at times, so the zeros show."""
    b = _CaseBuilder(ch, w)
    feats = _ring_features(ch, w)
    cap = w.capacity
    maxs = spec.dwz_max_sectors(w.disk_bytes)
    req_type = ch.choice((spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES))
    seg_bytes = ch.choice((16, 16, 16, 16, 16, 16, 0, 8, 24, 32, 20))
    num = ch.choice((1, 1, ch.int(1, 8), ch.int(1, cap), 0, maxs, maxs + 1, 0xFFFF_FFFF))
    if num <= cap and ch.bool(0.8):
        sector = ch.int(0, cap - num)
    else:
        sector = ch.choice((cap - num + 1 if num <= cap + 1 else 0, cap, 1 << 55,
                            (1 << 64) - 1, (1 << 64) - num if num else 0))
        sector &= U64
    flags = ch.choice((0, 0, 0, 0, 0, spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, 2, 0x8000_0000,
                       3))
    status = _dwz_status(w, req_type, seg_bytes, sector, num, flags)
    reqs: list[_Req] = []
    if status == spec.VIRTIO_BLK_S_OK and num and ch.bool(0.4):
        out_sec = sector + ch.int(0, num - 1)
        slot = b.slot()
        b.put(slot, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_OUT, 0, out_sec))
        buf = b.buffer(spec.SECTOR_SIZE, writable=False)
        b.put(buf, b.payload(spec.SECTOR_SIZE))
        b.put(slot + HDR + 4, b"\xa5")
        reqs.append(_Req([Seg(slot, HDR, False), Seg(buf, spec.SECTOR_SIZE, False),
                          Seg(slot + HDR + 4, 1, True)], spec.VIRTIO_BLK_S_OK))
    payload = virtio.DWZ_SEGMENT.pack(sector, num, flags)
    payload = (payload * 2)[:seg_bytes] if seg_bytes > 16 else payload[:seg_bytes]
    header = virtio.BLK_HEADER.pack(req_type, 0, ch.int(0, 3))
    slot = b.slot()
    layout = ch.choice(("alone", "alone", "split", "shared")) if seg_bytes >= 2 else "alone"
    if layout == "shared":
        buf = b.buffer(HDR + seg_bytes, writable=False)
        b.put(buf, header + payload)
        segs = [Seg(buf, HDR + seg_bytes, False)]
    else:
        b.put(slot, header)
        segs = [Seg(slot, HDR, False)]
        if seg_bytes:
            buf = b.buffer(seg_bytes, writable=False)
            b.put(buf, payload)
            if layout == "split":
                k = ch.int(1, seg_bytes - 1)
                buf2 = b.buffer(seg_bytes - k, writable=False)
                b.put(buf2, payload[k:])
                segs += [Seg(buf, k, False), Seg(buf2, seg_bytes - k, False)]
            else:
                segs.append(Seg(buf, seg_bytes, False))
    b.put(slot + HDR + 4, b"\xa5")
    segs.append(Seg(slot + HDR + 4, 1, True))
    # the status byte in a read-only grant or mapping, for a request that zeroes nothing (the
    # cycle bound knows no zeroing before a fault): cause 5, nothing written
    ro_status = w.translated and not (status == spec.VIRTIO_BLK_S_OK and num) \
        and ch.bool(0.25)
    if ro_status:
        ref = ch.choice(sorted(w.readonly_refs))
        off = ch.int(0, PAGE - 1)
        segs[-1] = Seg(w.iova_addr(ref, off, _any_alias(ch)) if w.iova
                       else spec.make_handle(ref, off), 1, True)
    reqs.append(_Req(segs, status))
    ok = status == spec.VIRTIO_BLK_S_OK and num > 0 and not ro_status
    backs = sorted({sector, sector + num - 1}) if ok else [ch.int(0, cap - 1)]
    reqs += [_read_back(b, s) for s in backs]
    reqs, tables = _maybe_indirect(b, reqs, feats, 0.3)
    zeroed = (sector * spec.SECTOR_SIZE, (sector + num) * spec.SECTOR_SIZE) if ok else None
    name = "discard" if req_type == spec.VIRTIO_BLK_T_DISCARD else "write_zeroes"
    case = _assemble(ch, w, index, "discard_zeroes", Expect(0), reqs, b, features=feats,
                     tables=tables, note=f"{name} {layout} {seg_bytes} bytes: sector {sector:#x}"
                     f" num {num:#x} flags {flags:#x}")
    case.expect = Expect(spec.FAULT_READONLY) if ro_status else \
        Expect(0, case.expect.statuses, zeroed=zeroed)
    if ro_status:
        case.note += ", status byte read-only"
    return case


def gen_disk_audit(ch: Chooser, w: World, index: int, first: int, count: int) -> Case:
    """Good T_INs reading sectors ``[first, first + count)`` of the disk into guest memory, 4
    sectors a request: compared with the reference's, what the stream did to the disk
    (zeroing included) shows."""
    b = _CaseBuilder(ch, w)
    reqs = []
    for s in range(first, first + count, 4):
        k = min(4, first + count - s)
        slot = b.slot()
        b.put(slot, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_IN, 0, s))
        buf = b.buffer(k * spec.SECTOR_SIZE, writable=True)
        b.put(slot + HDR + 4, b"\xa5")
        reqs.append(_Req([Seg(slot, HDR, False), Seg(buf, k * spec.SECTOR_SIZE, True),
                          Seg(slot + HDR + 4, 1, True)], spec.VIRTIO_BLK_S_OK))
    case = _assemble(ch, w, index, "disk_audit", Expect(0), reqs, b,
                     note=f"sectors {first}..{first + count - 1}")
    case.avail_flags = 0
    return case


# Category -> (generator, weight, modes: "any", "grant" (handle mode only) or "iova")
CATEGORIES: dict[str, tuple[Gen, int, str]] = {
    "good": (gen_good, 16, "any"),
    "not_handle": (gen_not_handle, 4, "grant"),
    "ref_outside": (gen_ref_outside, 4, "grant"),
    "not_permitted": (gen_not_permitted, 4, "grant"),
    "wrong_domain": (gen_wrong_domain, 4, "grant"),
    "readonly_write": (gen_readonly_write, 4, "grant"),
    "run_off_grant": (gen_run_off_grant, 4, "grant"),
    "table_end": (gen_table_end, 3, "grant"),
    "ring_not_handle": (gen_ring_not_handle, 2, "grant"),
    "bus_error": (gen_bus_error, 6, "any"),
    "index_outside": (gen_index_outside, 3, "any"),
    "chain_loop": (gen_chain_loop, 3, "any"),
    "chain_too_long": (gen_chain_too_long, 2, "any"),
    "indirect": (gen_indirect, 2, "any"),
    "readable_after_writable": (gen_readable_after_writable, 3, "any"),
    "addr_wrap": (gen_addr_wrap, 2, "any"),
    "total_len": (gen_total_len, 2, "any"),
    "avail_jump": (gen_avail_jump, 3, "any"),
    "bad_queue": (gen_bad_queue, 3, "any"),
    "bad_request": (gen_bad_request, 4, "any"),
    "zero_length": (gen_zero_length, 3, "any"),
    "sector_past_end": (gen_sector_past_end, 3, "any"),
    "edge_ok": (gen_edge_ok, 3, "any"),
    "notify_ignored": (gen_notify_ignored, 3, "any"),
    "iova_unmapped": (gen_iova_unmapped, 5, "iova"),
    "iova_run_off_map": (gen_iova_run_off_map, 5, "iova"),
    "iova_readonly": (gen_iova_readonly, 4, "iova"),
    "iova_writeonly": (gen_iova_writeonly, 4, "iova"),
    "iova_fail": (gen_iova_fail, 3, "iova"),
    "iova_never": (gen_iova_never, 2, "iova"),
    "iova_late": (gen_iova_late, 3, "iova"),
    "iova_reset_miss": (gen_iova_reset_miss, 3, "iova"),
    "iova_pressure": (gen_iova_pressure, 4, "iova"),
    # issue 17 (each needs a feature the build offers: NEEDS)
    "indirect_ok": (gen_indirect_ok, 4, "any"),
    "indirect_bad": (gen_indirect_bad, 5, "any"),
    "indirect_fault": (gen_indirect_fault, 3, "any"),
    "event_idx": (gen_event_idx, 4, "any"),
    "event_fault": (gen_event_fault, 3, "any"),
    "limits": (gen_limits, 2, "any"),
    "discard_zeroes": (gen_discard_zeroes, 5, "any"),
    # issue 16's early addresses: drawn only when a stream asks for it (``only``), so that the
    # weighted streams draw as before
    "ring_straddle": (gen_ring_straddle, 0, "any"),
}

# Category -> the feature bits the build must offer for it (any one of them)
NEEDS: dict[str, int] = {
    "indirect_ok": F_INDIRECT, "indirect_bad": F_INDIRECT, "indirect_fault": F_INDIRECT,
    "event_idx": F_EVENT_IDX, "event_fault": F_EVENT_IDX,
    "limits": 1 << spec.VIRTIO_BLK_F_SEG_MAX | 1 << spec.VIRTIO_BLK_F_SIZE_MAX,
    "discard_zeroes": 1 << spec.VIRTIO_BLK_F_DISCARD | 1 << spec.VIRTIO_BLK_F_WRITE_ZEROES,
}


def categories_for(handle_mode: bool, iova: bool = False, offered: int | None = None
                   ) -> list[str]:
    """The categories of a stream in grant mode (``handle_mode``), IOVA mode or GPA mode, on a
    build offering the feature bits ``offered`` (None: every feature)."""
    mode = "iova" if iova else "grant" if handle_mode else "gpa"
    return [k for k, (_, _, m) in CATEGORIES.items() if m in ("any", mode)
            and (offered is None or k not in NEEDS or offered & NEEDS[k])]


def generate(ch: Chooser, w: World, index: int, category: str | None = None) -> Case:
    """The next case of a stream: a category by weight (or the one given), then its case."""
    if category is None:
        names = categories_for(w.handle_mode, w.iova, w.offered)
        pick = ch.int(0, sum(CATEGORIES[k][1] for k in names) - 1)
        for name in names:
            pick -= CATEGORIES[name][1]
            if pick < 0:
                category = name
                break
    assert category is not None
    case = CATEGORIES[category][0](ch, w, index)
    if w.iova and category in NEEDS and not case.flush and ch.bool(0.3):
        case.flush = True  # IOVA: issue 17's accesses (tables, event words, status) miss too
    return case


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
    b.put(slot, virtio.BLK_HEADER.pack(req_type, 0, sector))
    segs = [Seg(slot, HDR, False)]
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


def case_ranges(case: Case, w: World) -> list[tuple[int, int]]:
    """The device-address ranges ``(addr, nbytes)`` the driver exposes to the device in
    ``case``: the queue's descriptor table, avail ring and used ring (virtio 1.x section 2.7:
    16 n, 4 + 2 n and 4 + 8 n bytes, plus the 2-byte event word of each when the case
    negotiates EVENT_IDX) when the queue size is valid, every descriptor's buffer, every
    indirect table (the indirect descriptor's buffer) and every table entry's buffer. What
    the isolation monitor checks each burst against
    (``tb.isolation.IsolationChecker.expose``)."""
    q = case.queue
    out: list[tuple[int, int]] = []
    if 1 <= q.n <= w.queue_num_max and not q.n & (q.n - 1):
        # the event words (used_event after the avail ring, avail_event after the used ring)
        # only when EVENT_IDX is negotiated (virtio 1.2 section 2.7.10)
        ev = 2 if w.driver_features(case.features) >> spec.VIRTIO_RING_F_EVENT_IDX & 1 else 0
        out += [(q.desc, 16 * q.n), (q.avail, 4 + 2 * q.n + ev), (q.used, 4 + 8 * q.n + ev)]
    out += [(a, ln) for _, a, ln, _, _ in case.descs if ln]
    # indirect tables (their own range is the indirect descriptor's above) and the buffers
    # their entries name (virtio 1.2 section 2.7.5.3)
    out += [(a, ln) for _, entries in case.tables for _, a, ln, _, _ in entries if ln]
    return out


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
