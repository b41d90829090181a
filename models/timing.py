"""Cycle-level model of the device's datapath (``docs/timing.md``).

Given the request stream and a deterministic memory (every ready high, read data ``latency``
cycles after the address, write responses ``latency`` cycles after the last data beat), it
predicts the cycle of every AXI address handshake and of every completion, relative to the cycle
in which the QueueNotify write that started the engine was accepted.

It is written from the pipeline description in ``docs/timing.md``, on top of the functional
reference: :class:`TimedDevice` is a :class:`~models.device.ReferenceDevice` that also records,
per accepted notify, the steps the engine takes (which accesses, in which order, with which
transactions), and :meth:`TimedDevice.schedule` turns them into cycles. It never looks at the
RTL or its traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from models import spec, virtio
from models.bus import Transaction
from models.device import Descriptor, ReferenceDevice
from models.engine import vring_need_event

__all__ = ["Handshake", "KickSchedule", "TimedDevice", "lower_bound", "request_traces"]


@dataclass(frozen=True)
class Handshake:
    """An address handshake on ``m_axi``: ``cycle`` counts from the notify's cycle."""

    kind: str
    addr: int
    beats: int
    cycle: int


@dataclass
class KickSchedule:
    """What one accepted notify made the engine do, in cycles after the notify."""

    handshakes: list[Handshake] = field(default_factory=list)
    completions: list[int] = field(default_factory=list)  # used-index write responses
    irqs: list[int] = field(default_factory=list)  # cycles in which irq is (re)asserted
    idle: int = 0  # first cycle the engine is idle again


@dataclass(frozen=True)
class FaultMark:
    """Where an access stopped on a fault: the last item of its ``txns``. ``cause`` is the
    fault's (``spec.FAULT_*``); ``index`` is the number of transactions issued before it (the
    index a burst in its place would have had in ``transactions``)."""

    cause: int
    index: int
    kind: str = "F"


@dataclass
class _Access:
    step: str  # poll, head, desc, table, hdr, data, status, used, uidx, drain; uevt, aevt,
    # aevt_drain
    kind: str  # R, W or D (drain)
    txns: list  # Transaction, then a FaultMark if the access faulted
    fault: int = 0  # the fault cause this access ended with (0: none)
    indirect: bool = False  # a descriptor read that found an INDIRECT descriptor (its whole
    # table is read after TABLE and TABLE_ISSUE)


@dataclass
class _Request:
    descs: list[Descriptor]
    req_type: int
    goal: int  # data bytes moved (0 for flush, errors, unsupported)
    accesses: list[_Access] = field(default_factory=list)
    fault: int = 0  # a fault the ring engine raised itself (chain, request framing)
    # entries of the indirect table the walk checked (a DESC_CHECK each), out of what the table
    # read (step "table") returned; the last is the one a chain fault in the table names, or
    # the one whose NEXT index failed the range or loop check
    entries: int = 0
    # DISCARD/WRITE_ZEROES: the segment was read (its data pieces, then SEG_CHECK and SEG_ACT),
    # and the bytes the zero command cleared (None: no zero command, the status says why)
    segment: bool = False
    zeroed: int | None = None
    segment_bytes: bytes = b""

    @property
    def reads_data(self) -> bool:
        """The data pieces are device reads (OUT's data, a DISCARD/WRITE_ZEROES segment)."""
        return self.req_type not in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_GET_ID)


@dataclass
class _Round:
    poll: _Access | None = None
    requests: list[_Request] = field(default_factory=list)
    fault: int = 0  # a fault the ring engine raised itself (queue check, avail index)
    no_irq: bool = False  # VIRTQ_AVAIL_F_NO_INTERRUPT in the poll's avail.flags
    queue_num_bad: bool = False  # the queue check failed on QueueNum (QNUM's extra cycle)
    # EVENT_IDX (negotiated when the round started): no interrupt per request; after the
    # round's last entry the used_event read (uevt) and its decision (uevt_irq); a round that
    # finds nothing publishes avail_event first (aevt: the 2-byte write and its drain), and the
    # next round polls again
    evt: bool = False
    uevt: _Access | None = None
    uevt_irq: bool = False
    aevt: list[_Access] = field(default_factory=list)

    @property
    def accesses(self) -> list[_Access]:
        """Every access of the round, in issue order."""
        return (([self.poll] if self.poll else []) + self.aevt
                + [a for r in self.requests for a in r.accesses]
                + ([self.uevt] if self.uevt else []))


class TimedDevice(ReferenceDevice):
    """The reference device plus a record of the engine's steps for :meth:`schedule`.

    Only fault-free runs are timed (a fault raises ``ValueError`` in :meth:`schedule`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kicks: list[list[_Round]] = []
        self._step = ""
        self._sink: list[_Access] | None = None
        # IOVA mode: for each IOTLB miss raised (``self.misses``, in order), the transaction
        # whose page it was raised for: the index the page's first burst gets in
        # ``transactions``
        self.miss_txns: list[int] = []
        self._in_access = False
        self._access_fault = 0
        # the interrupt status as the cycle model last left it: (cycle, InterruptStatus)
        self.irq_state: tuple[int, int] | None = None

    # -- recording ----------------------------------------------------------------------------
    def _run(self) -> None:
        self.kicks.append([])
        super()._run()

    def _round(self) -> bool:
        rnd = _Round(evt=self.event_idx_negotiated)
        self.kicks[-1].append(rnd)
        self._sink = []
        self._step = "poll"
        self._current_round = rnd
        more = super()._round()
        return more

    def _fault(self, cause: int, addr: int):
        if self._in_access:
            self._access_fault = cause  # the access records it (_record)
        else:  # the ring engine's own checks
            rnd = getattr(self, "_current_round", None)
            if rnd is None or self.kicks[-1][-1] is not rnd:
                rnd = _Round()  # (a queue check before any round: not reached by _round)
                self.kicks[-1].append(rnd)
            if rnd.poll is None:
                n = self.queue_num
                rnd.queue_num_bad = not 1 <= n <= self.queue_num_max or bool(n & (n - 1))
            if rnd.requests and rnd.poll is not None and self._step != "poll_check":
                rnd.requests[-1].fault = cause
            else:
                rnd.fault = cause
        return super()._fault(cause, addr)

    def _record(self, step: str, kind: str, first: int) -> None:
        txns = list(self.transactions[first:])
        fault, self._access_fault = self._access_fault, 0
        if fault:
            txns.append(FaultMark(fault, len(self.transactions)))
        access = _Access(step, kind, txns, fault)
        rnd = self._current_round
        if step == "poll":
            rnd.poll = access
        elif step == "uevt":
            rnd.uevt = access
        elif step in ("aevt", "aevt_drain"):
            rnd.aevt.append(access)
        else:
            rnd.requests[-1].accesses.append(access)

    def dma_read(self, v, n, sink=None):
        first = len(self.transactions)
        self._in_access = True
        indirect = False
        try:
            out = super().dma_read(v, n, sink)
            rnd = self._current_round
            if self._step == "desc" and n == virtio.DESC.size:
                indirect = bool(virtio.DESC.unpack(out)[2] & spec.VIRTQ_DESC_F_INDIRECT)
            if self._step == "poll":
                rnd.no_irq = bool(out[0] & spec.VIRTQ_AVAIL_F_NO_INTERRUPT)
            elif self._step == "uevt":  # the decision the engine takes on it (UEVT_CHECK)
                rnd.uevt_irq = vring_need_event(int.from_bytes(out, "little"), self.used_idx,
                                                self.signalled_used)
            return out
        finally:
            self._in_access = False
            self._record(self._step, "R", first)
            if self._step == "poll":
                self._step = "poll_check"
            elif indirect:
                self._current_round.requests[-1].accesses[-1].indirect = True

    def dma_write(self, v, data):
        first = len(self.transactions)
        self._in_access = True
        try:
            super().dma_write(v, data)
        finally:
            self._in_access = False
            step = self._step
            if step == "used_or_uidx":
                step = "uidx" if v == (self.queue_device + 2) % (1 << 64) else "used"
            elif step == "poll_check":  # nothing pending: avail_event (EVENT_IDX)
                step = self._step = "aevt"
            self._record(step, "W", first)

    def drain(self) -> None:
        self._in_access = True
        try:
            super().drain()
        finally:
            self._in_access = False
            self._record("aevt_drain" if self._step == "aevt" else "drain", "D",
                         len(self.transactions))
        self._step = "used_or_uidx"

    def _serve_one(self, n: int, avail_flags: int) -> None:
        self._current_round.requests.append(_Request([], -1, 0))
        self._step = "head"
        super()._serve_one(n, avail_flags)
        self._step = "uevt"  # (the next entry's head sets "head" again)

    def _walk_chain(self, head: int, n: int) -> list[Descriptor]:
        self._step = "desc"
        descs = super()._walk_chain(head, n)
        self._current_round.requests[-1].descs = descs
        self._step = "hdr"
        return descs

    def _read_table(self, addr: int, length: int) -> bytes:
        self._step = "table"
        out = super()._read_table(addr, length)
        self._step = "desc"  # (the walk reads no more descriptors: they come from the table)
        return out

    def _table_entry(self, table: bytes, i: int) -> bytes:
        self._current_round.requests[-1].entries += 1
        return super()._table_entry(table, i)

    def _read_range(self, descs, start, length, sink=None):
        req = self._current_round.requests[-1]
        self._step = "hdr" if start == 0 and length == spec.BLK_HEADER_BYTES else "data"
        if self._step == "data":
            req.goal = length  # (before the access: it may fault)
        out = super()._read_range(descs, start, length, sink)
        if self._step == "hdr":
            req.req_type = int.from_bytes(out[:4], "little")
        else:
            req.segment_bytes = out
        return out

    def _discard_write_zeroes(self, req_type, readable, r_total):
        req = self._current_round.requests[-1]
        req.segment = r_total - spec.BLK_HEADER_BYTES == spec.DWZ_SEGMENT_BYTES  # read
        status = super()._discard_write_zeroes(req_type, readable, r_total)
        if status == spec.VIRTIO_BLK_S_OK:
            req.zeroed = virtio.DWZ_SEGMENT.unpack(req.segment_bytes)[1] * spec.SECTOR_SIZE
        return status

    def _write_range(self, descs, start, data):
        req = self._current_round.requests[-1]
        w_total = sum(d.len for d in descs)
        if start == w_total - 1 and len(data) == 1:  # a data range always starts at 0
            self._step = "status"
        else:
            self._step = "data"
            req.goal = len(data)
        super()._write_range(descs, start, data)

    def _translate_iova(self, iova, write):
        before = len(self.misses)
        try:
            return super()._translate_iova(iova, write)
        finally:  # (the page's burst, if any, is the next transaction)
            self.miss_txns += [len(self.transactions)] * (len(self.misses) - before)

    def clear_records(self) -> None:
        super().clear_records()
        self.miss_txns = []

    # -- timing -------------------------------------------------------------------------------
    def schedule(self, kick: int, *, latency: int,
                 resolved: Mapping[int, int] | None = None,
                 lookups: bool = True) -> KickSchedule:
        """Cycles of the ``kick``-th accepted notify's work (docs/timing.md, all rules).

        IOVA mode: every lookup that hit costs what a grant lookup costs. ``resolved`` maps
        the index of a miss (in ``misses``) to the cycle, counted from this notify, in which
        the hypervisor's ``MISS_RESOLVE`` write that answered it was accepted on ``s_hv``; a
        miss of this kick not in ``resolved`` raises ``ValueError``. Without ``resolved``
        (None) every lookup is taken as a hit: the warm-IOTLB prediction of the same requests.
        ``lookups=False``: the GPA-only device, which issues a descriptor read without the
        ``DESC_ISSUE`` cycle (the bench's rows have no burst that waits for a lookup).
        """
        if self.faults:
            raise ValueError("the timing model covers fault-free runs only")
        waits: dict[int, int] | None = None
        if resolved is not None:
            last = {}  # transaction -> the miss answered last before its burst
            for k, t in enumerate(self.miss_txns):
                last[t] = k
            ids = {id(x): i for i, x in enumerate(self.transactions)}
            waits = {}
            for rnd in self.kicks[kick]:
                for acc in rnd.accesses:
                    for txn in acc.txns:
                        k = last.get(ids[id(txn)])
                        if k is None:
                            continue
                        if k not in resolved:
                            raise ValueError(f"miss {k} ({self.misses[k][0]:#x}) has no "
                                             "resolve cycle")
                        waits[id(txn)] = resolved[k]
        return _Scheduler(self.data_width, latency, waits, lookups=lookups).run(self.kicks[kick])


    def events(self, kick: int, mem: MemorySide, notify: int, *, end: int,
               acks: Mapping[int, int] | None = None,
               resolved: Mapping[int, int] | None = None,
               lookups: bool = True) -> list[Event]:
        """Every device-driven event of the ``kick``-th accepted notify (docs/timing.md "Every
        event"), in absolute cycles, given what the memory did (``mem``, observed), the notify's
        handshake cycle ``notify``, the InterruptACK writes accepted on ``s_axil`` (``acks``:
        cycle -> value written) and, in IOVA mode, each miss's ``MISS_RESOLVE`` acceptance
        cycle (``resolved``: miss index -> absolute cycle). Events up to edge ``end``; the
        engine must have gone idle or halted by then. Faults are covered (the one the reference
        raised ends the kick: the FAULT state, then ``fault`` and ``needs_reset``).
        ``irq_state`` carries InterruptStatus from one call to the next (None: 0 at
        ``notify``; set it to None after a device reset). ``lookups=False``: the GPA-only
        device (``translation=False``), whose bursts never wait for a lookup."""
        waits: dict = {}
        if resolved is not None:
            last = {t: k for k, t in enumerate(self.miss_txns)}
            ids = {id(x): i for i, x in enumerate(self.transactions)}
            for rnd in self.kicks[kick]:
                for acc in rnd.accesses:
                    for txn in acc.txns:
                        i = txn.index if isinstance(txn, FaultMark) else ids[id(txn)]
                        k = last.get(i)
                        if k is None:
                            continue
                        if k not in resolved:
                            raise ValueError(f"miss {k} has no resolve cycle")
                        waits[("mark", i) if isinstance(txn, FaultMark) else id(txn)] = \
                            resolved[k]
        dma = _CycleDma(mem, self.data_width, notify, waits)
        dma.limit = end
        dma.lookups = lookups
        if hasattr(mem, "bind"):  # a memory that answers the model's own handshakes (tests)
            mem.bind(dma.events)
        sched = _CycleScheduler(self.data_width, dma, lookups=lookups)
        sched.run_kick(self.kicks[kick], notify)
        stop = sched.fault[0] if sched.fault else sched.out.idle
        if stop > end:
            raise ValueError(f"cycle model: the engine is still running at {end} "
                             f"(it ends at {stop})")
        while dma.c <= end:
            dma.step(None)
        out = dma.events
        if sched.fault is not None:
            f, cause = sched.fault
            out += [Event("fault", f + 1, f"cause={cause}"), Event("needs_reset", f + 1)]
        start, status = self.irq_state if self.irq_state is not None else (notify, 0)
        if start > notify:
            raise ValueError("irq_state is past this notify")
        irq, status = _irq_events(sched.irq_sets, acks or {}, start, end, status)
        self.irq_state = (end, status)
        out += irq
        out.sort(key=lambda e: (e.cycle, EVENT_NAMES.index(e.name)))
        return out


class _Scheduler:
    """docs/timing.md, section by section. ``t`` is always "the cycle in which the ring engine
    is in the state that issues the next command"."""

    W_LATENCY = 4  # a write beat leaves on the W channel this many cycles after it enters
    LOOKUP = 3  # a page's lookup answers this many cycles after the address handshake

    # docs/timing.md "IOVA misses": the burst's address handshake is RESOLVE_TO_ISSUE cycles
    # after the MISS_RESOLVE write's acceptance (stale seen in ISSUE, XLATE, XKEEP, the lookup's
    # three cycles, ISSUE), or that many after the cycle ISSUE would have issued it, when the
    # hypervisor answered before the DMA engine got there
    RESOLVE_TO_ISSUE = 5

    def __init__(self, data_width: int, latency: int,
                 waits: dict[int, int] | None = None, *, lookups: bool = True) -> None:
        self.width = data_width
        self.L = latency
        self.waits = waits or {}  # id(transaction) -> its miss's resolve cycle
        # docs/timing.md: the ring engine waits a cycle (DESC_ISSUE) before each descriptor
        # read whose index it has just read, so that the lookup's address comes from
        # flip-flops; 0 for the GPA-only device (``lookups=False``), which makes no lookup
        self.hold = int(lookups)
        self.out = KickSchedule()
        self.last_b = -1  # cycle of the latest write response
        self.outstanding: list[int] = []  # response cycles of posted writes
        # the cycle the ring engine's own checks count from: the last command's done, or, after
        # an indirect table's walk, the cycle before its last entry's DESC_CHECK
        self.last_done = 0

    @staticmethod
    def _ends_page(txn: Transaction) -> bool:
        # a burst's page offset is the same virtually and physically
        return (txn.addr + txn.nbytes) % spec.PAGE_SIZE == 0

    def _after_miss(self, txn: Transaction, issue: int) -> int:
        """The address handshake of ``txn``, which ISSUE would make at ``issue`` on a hit."""
        r = self.waits.get(id(txn))
        if r is None:
            return issue
        return max(issue, r + 1) + self.RESOLVE_TO_ISSUE - 1

    # DMA commands: accepted in cycle a; return the cycle of `done`.
    def read(self, a: int, txns: list[Transaction]) -> int:
        t = a
        for txn in txns:
            ar = self._after_miss(txn, t + 2)  # ADDR, then ISSUE with the address handshake
            beats = txn.beats(self.width)
            self.out.handshakes.append(Handshake("R", txn.addr, beats, ar))
            t = ar + self.L + beats  # the last beat; the next burst's ADDR follows
        return t

    def write(self, a: int, txns: list[Transaction]) -> int:
        t = a
        ready = 0  # the earliest address cycle the next burst's translation allows
        for i, txn in enumerate(txns):
            aw = self._after_miss(txn, max(t + 2, ready))
            beats = txn.beats(self.width)
            self.out.handshakes.append(Handshake("W", txn.addr, beats, aw))
            self.outstanding = [b for b in self.outstanding if b >= aw]
            if len(self.outstanding) >= 8:
                raise ValueError("more than 8 posted writes: outside the model's scope")
            # beat j enters the write pipeline at aw + j and leaves at aw + W_LATENCY + j
            last_w = aw + self.W_LATENCY + beats - 1
            b = last_w + 1 + self.L
            self.outstanding.append(b)
            self.last_b = max(self.last_b, b)
            t = aw + beats - 1  # the last beat enters the write pipeline (done)
            if i + 1 < len(txns) and self._ends_page(txn):
                ready = aw + self.LOOKUP  # the next page is looked up in this handshake
        return t

    def drain(self, a: int, acc: _Access | None = None) -> int:
        return max(a + 1, self.last_b + 1)

    def zero(self, a: int, nbytes: int) -> int:
        """A zero command (DISCARD/WRITE_ZEROES) accepted in cycle ``a``: ``ZERO`` from
        ``a + 1`` clears two disk words a cycle and is done in its last cycle (at least one)."""
        return a + max(1, nbytes // (2 * (self.width // 8)))

    def run(self, rounds: list[_Round]) -> KickSchedule:
        t = 2  # the notify's cycle, then IDLE sees the kick, then QCHECK issues the poll
        for rnd in rounds:
            assert rnd.poll is not None
            t = self.round(t, rnd)
        return self.out

    def round(self, t: int, rnd: _Round) -> int:
        """The round whose poll is issued in cycle ``t``; returns the cycle in which the next
        round's poll is issued (QCHECK)."""
        d = self.read(t, rnd.poll.txns)
        t = d + 2  # POLL_CHECK, then POLL_ACT issues the head read or goes idle
        if not rnd.requests:
            if rnd.aevt:  # EVENT_IDX: AEVT forms the address, AEVT_ISSUE issues the write
                write, drain = rnd.aevt
                d = self.write(t + 2, write.txns)
                d = self.drain(d + 1, drain)  # AEVT_DRAIN issues the drain
                return d + 2  # AEVT_DONE, then QCHECK issues the poll
            self.out.idle = t + 1
            return t + 1
        for req in rnd.requests:
            d = self.request(t, req)
            if not rnd.evt and not rnd.no_irq:
                self.on_irq(d + 1)  # the registered pulse
            t = d + 1  # HEAD (next entry) or QCHECK (next round) issues; or UEVT
        if rnd.evt:  # UEVT issues the used_event read; UEVT_CHECK, UEVT_ACT (the pulse)
            d = self.read(t, rnd.uevt.txns)
            if rnd.uevt_irq:
                self.on_irq(d + 3)
            t = d + 3  # QCHECK issues the poll
        return t

    def on_irq(self, pulse: int) -> None:
        """The used-buffer pulse is high in cycle ``pulse``; InterruptStatus (and irq) follow."""
        self.out.irqs.append(pulse + 1)

    def table_checks(self, d: int, entries: int) -> int:
        """The indirect table's read done at ``d``: the cycle of the last walked entry's
        ``DESC_CHECK`` (the first at ``d + 5``, ``d + 6`` with a 4-byte bus; each further one 3
        cycles later, 4 with a 4-byte bus)."""
        narrow = self.width // 8 < 8
        return d + (6 if narrow else 5) + (4 if narrow else 3) * (entries - 1)

    def request(self, t: int, req: _Request) -> int:
        accesses = req.accesses
        a = accesses[0]
        assert a.step == "head"
        d = self.read(t, a.txns)
        # DESC_FIRST, then DESC_START issues the first descriptor read (or DESC_ISSUE does)
        t = d + 2 + self.hold
        walk = sum(1 for x in accesses if x.step in ("desc", "table"))
        for i in range(1, walk + 1):
            a = accesses[i]
            assert a.step in ("desc", "table"), a.step
            d = self.read(t, a.txns)
            if a.step == "table":
                # the entries are checked out of the table buffer, no bus access; after the
                # last one's DESC_CHECK at c, DESC_NEXT issues the header's first piece at
                # c + 1 (or the engine's own fault follows, as after a descriptor read done at
                # c - 1)
                c = self.table_checks(d, req.entries)
                self.last_done = c - 1
                t = c + 1
            else:
                # DESC_CHECK, then DESC_NEXT issues the next descriptor read or the header's
                # first piece; after an indirect descriptor, TABLE and TABLE_ISSUE issue the
                # whole table's read
                t = d + (4 if a.indirect else 2)
                if not a.indirect and i < walk and accesses[i + 1].step == "desc":
                    t += self.hold  # the next descriptor's read: DESC_ISSUE
        acc = iter(accesses[walk + 1:])
        # pass 2 sees only the non-empty descriptors (empty ones are not cached)
        descs = [x for x in req.descs if x.len]
        k, got, ends = 0, 0, False
        while True:
            a = next(acc)  # (none when the ring engine faulted on the chain)
            assert a.step == "hdr", a.step
            take = min(descs[k].len, spec.BLK_HEADER_BYTES - got)
            d = self.read(t, a.txns)
            got += take
            t = d + 1  # HDR_PIECE issues the next piece
            if got == spec.BLK_HEADER_BYTES:
                ends = take == descs[k].len
                break
            k += 1
        # The cached descriptor in the prefetch register after the header: the one after the
        # header's last piece if that piece ends its descriptor, else that descriptor.
        pf = k + 1 if ends else k
        n_readable = sum(1 for x in descs if not x.writable)
        write = not req.reads_data
        if req.goal and write:
            need = n_readable  # IN, GET_ID: the first device-writable descriptor
        elif req.goal:
            need = pf  # OUT: the data follows the header
        else:
            need = len(descs) - 1  # the status byte's
        t += 3  # DECODE, DISPATCH, ROUTE
        if need != pf:
            t += 2  # FETCH, ROUTE_FETCHED
        if req.goal:
            if write:
                k, off = n_readable, 0
            else:
                k, off = (k, take) if not ends else (k + 1, 0)
            moved = 0
            while moved < req.goal:  # DATA_PIECE
                piece = min(descs[k].len - off, req.goal - moved)
                a = next(acc)
                assert a.step == "data", a.step
                d = self.write(t, a.txns) if write else self.read(t, a.txns)
                moved += piece
                k, off, t = k + 1, 0, d + 1
            if req.segment:  # SEG_CHECK, SEG_ACT; then STATUS, or ZERO_ISSUE
                t += 2
                if req.zeroed is not None:
                    t = self.zero(t, req.zeroed) + 1  # ZERO_WAIT, then STATUS
        a = next(acc)
        assert a.step == "status", a.step
        d = self.write(t, a.txns)  # STATUS
        a = next(acc)
        assert a.step == "drain"
        d = self.drain(d + 1, a)  # DRAIN_DATA
        a = next(acc)
        assert a.step == "used", a.step
        d = self.write(d + 1, a.txns)  # USED
        a = next(acc)
        assert a.step == "uidx", a.step
        d = self.write(d + 1, a.txns)  # USED_IDX
        self.out.completions.append(self.last_b)
        a = next(acc)
        assert a.step == "drain"
        return self.drain(d + 1, a)  # DRAIN_USED: done in this cycle



# -- The cycle model: every handshake the device drives, under any memory timing ---------------

@dataclass(frozen=True)
class Event:
    """A device-driven event (docs/timing.md "Every event"): ``name`` is one of
    :data:`EVENT_NAMES`, ``cycle`` the clock edge it is sampled at (absolute, as the bench
    counts edges), ``info`` what identifies it beyond its cycle (an address handshake's
    ``addr``/``beats``, a fault's cause)."""

    name: str
    cycle: int
    info: str = ""


EVENT_NAMES = ("AR", "AW", "W", "R", "B", "irq_rise", "irq_fall", "fault", "needs_reset")


@dataclass
class MemorySide:
    """What the memory did on ``m_axi``, edge by edge (absolute cycles): the edges at which
    its ``arready``, ``awready``, ``wready`` were high, and at which ``rvalid`` (with
    ``rlast``, ``rresp``) and ``bvalid`` (with ``bresp``) were. The cycle model is given this
    (observed) and predicts the device's side."""

    arready: set[int] = field(default_factory=set)
    awready: set[int] = field(default_factory=set)
    wready: set[int] = field(default_factory=set)
    rvalid: dict[int, tuple[bool, int]] = field(default_factory=dict)
    bvalid: dict[int, int] = field(default_factory=dict)


class _Faulted(Exception):
    """A DMA command ended with a fault in cycle ``done``."""

    def __init__(self, done: int, cause: int) -> None:
        super().__init__(done, cause)
        self.done, self.cause = done, cause


class _CycleDma:
    """The DMA engine (docs/timing.md "Every event"), one clock cycle per :meth:`step`: its
    FSM, the write pipeline (S1, S2, the W FIFO), the posted-response queue. ``c`` is the next
    cycle to simulate; values are those during cycle ``c``, sampled at edge ``c``."""

    W_FIFO = 8  # beats in S1, S2 and the W FIFO together
    FIFO_INNER = 7  # the W FIFO: a block RAM of 7 entries and an output register
    MAX_POSTED = 8

    def __init__(self, mem: MemorySide, width: int, c: int,
                 waits: dict[int, int] | None = None) -> None:
        self.mem, self.width, self.c = mem, width, c
        self.waits = waits or {}  # burst's transaction index -> its miss's resolve cycle
        self.events: list[Event] = []
        self.state = "IDLE"
        self.occ, self.w_room = 0, True
        self.w_active, self.w_cnt, self.w_one = False, 0, False
        self.s1 = self.s2 = False
        self.inner: list[bool] = []  # W FIFO memory (entries: a beat's wlast)
        self.r_rdy = False
        self.bq = 0
        self.posted = self.bq_full = False
        self.werr = False
        self.keep_next = self.waiting = False
        self.aw_sent = False
        self.bursts: list = []
        self.k = 0
        self.write = False
        self.r_err = False
        self.resolved_seen = False
        self.zero_rem = 0  # a zero command's bytes not yet cleared
        self.done: int | None = None
        self.fault = 0
        self.limit = 1 << 62  # the last cycle of the memory's record
        self.lookups = True  # False: the GPA-only device, no burst waits for a lookup

    @property
    def busy(self) -> bool:
        return self.posted or self.w_active or self.occ != 0 or self.state != "IDLE"

    def command(self, a: int, kind: str, txns: list, beats) -> int:
        """Run until the command handed over in cycle ``a`` is done; return that cycle (raise
        :class:`_Faulted` if it ends with a fault)."""
        while self.c < a:
            self.step(None)
        if self.state != "IDLE":
            raise AssertionError(f"cycle model: a command at {a} while the DMA engine is busy")
        self.step((kind, txns, beats))
        while self.done is None:
            if self.c > self.limit:
                raise ValueError(f"cycle model: the {kind} command handed over at {a} is not "
                                 f"done by {self.limit}, where the memory's record ends")
            self.step(None)
        d, self.done = self.done, None
        if self.fault:
            cause, self.fault = self.fault, 0
            raise _Faulted(d, cause)
        return d

    def _handed_over(self) -> str:
        if self.k + 1 == len(self.bursts):
            self.done = self.c
            return "IDLE"
        self.k += 1
        return "ADDR"

    def _finish(self, cause: int) -> str:
        self.done, self.fault = self.c, cause
        return "IDLE"

    def step(self, cmd) -> None:
        c, mem = self.c, self.mem
        arready, awready, wready = c in mem.arready, c in mem.awready, c in mem.wready
        rv = mem.rvalid.get(c)
        bresp = mem.bvalid.get(c)
        state, nxt = self.state, self.state
        keep = self.keep_next
        a_hs = w_start = xkeep = False
        aw_sent_next = self.aw_sent
        k = self.k  # (the burst of this cycle: a hand-over moves self.k on)
        burst = self.bursts[k] if self.bursts else None
        if state == "IDLE":
            if cmd is not None:
                kind, txns, beats = cmd
                self.write = kind == "W"
                self.bursts = [(t, beats(t) if isinstance(t, Transaction) else 0) for t in txns]
                self.k = 0
                self.r_err = False
                if kind == "D":
                    nxt = "DRAIN"
                elif kind == "Z":  # a zero command: no bus access
                    self.zero_rem = txns[0]
                    nxt = "ZERO"
                else:
                    keep = True
                    nxt = "ADDR"
        elif state == "ADDR":
            n = burst[1]
            self.w_cnt, self.w_one = n - 1, n == 1
            self.resolved_seen = False
            nxt = "ISSUE"
        elif state == "ZERO":  # two disk words a cycle; done in the last (at least one) cycle
            if self.zero_rem in (0, 2 * (self.width // 8)):
                nxt = self._finish(0)
            self.zero_rem -= 2 * (self.width // 8)
        elif state == "XLATE":
            nxt = "XKEEP"
        elif state == "XKEEP":
            keep = xkeep = True
            nxt = "ISSUE"
        elif state == "ISSUE":
            txn = burst[0]
            idx = txn.index if isinstance(txn, FaultMark) else None
            r = self.waits.get(id(txn) if idx is None else ("mark", idx))
            order_ok = not self.bq_full if self.write else not self.posted
            if self.waiting:
                pass
            elif r is not None and not self.resolved_seen:
                if c >= r + 1:
                    self.resolved_seen = True
                    if isinstance(txn, FaultMark) and txn.cause == spec.FAULT_IOTLB_FAILED:
                        nxt = self._finish(txn.cause)  # failed: the answer is the fault
                    else:  # resolved: the answer is stale, look the page up again
                        nxt = "XLATE"
            elif isinstance(txn, FaultMark):
                nxt = self._finish(txn.cause)  # the verdict fails: no address goes out
            elif not order_ok:
                pass
            elif self.write:
                w_start = True
                a_hs = awready
                aw_sent_next = awready
            else:
                a_hs = arready
                nxt = "RDATA" if arready else "RADDR"
        elif state == "RADDR":
            a_hs = arready
            if arready:
                nxt = "RDATA"
        elif state == "RDATA":
            if rv is not None:
                self.events.append(Event("R", c))
                last, resp = rv
                if resp != 0:
                    self.r_err = True
                if last:
                    if self.r_err:
                        nxt = self._finish(spec.FAULT_BUS_ERROR)
                    else:
                        nxt = self._handed_over()
        elif state == "WADDR":
            a_hs = not self.aw_sent and awready
            if awready:
                aw_sent_next = True
        # the write beats
        w_go = self.w_active or w_start
        w_issue = w_go and self.w_room
        w_last_issue = w_issue and self.w_one
        if state == "ISSUE" and w_start:
            nxt = self._handed_over() if awready and w_last_issue else "WADDR"
        elif state == "WADDR" and (self.aw_sent or awready) and (w_last_issue
                                                                   or not self.w_active):
            nxt = self._handed_over()
        pipe_busy = self.posted or self.w_active or self.occ != 0
        if state == "DRAIN" and not pipe_busy:
            werr, self.werr = self.werr, False
            nxt = self._finish(spec.FAULT_BUS_ERROR if werr else 0)
        if a_hs:
            txn, n = burst
            self.events.append(Event("AW" if self.write else "AR", c,
                                     f"addr={txn.addr:#x} beats={n}"))
        w_hs = self.r_rdy and wready
        if w_hs:
            self.events.append(Event("W", c))
        if bresp is not None:
            self.events.append(Event("B", c))
        # -- registers
        cross = False
        if a_hs:
            txn, _ = burst
            cross = (txn.addr + txn.nbytes) % spec.PAGE_SIZE == 0 and k + 1 < len(self.bursts)
        self.keep_next = a_hs and cross
        self.waiting = keep and self.lookups
        del xkeep
        if w_go:
            self.w_active = not w_last_issue
        if w_issue:
            self.w_one = self.w_cnt == 1
            self.w_cnt -= 1
        fifo_w = self.s2
        self.s2, self.s1 = self.s1, w_issue
        # SyncFIFOBuffered (amaranth.lib.fifo): a block RAM, then an output register
        inner_read = bool(self.inner) and (not self.r_rdy or wready)
        if inner_read:
            self.inner.pop(0)
            self.r_rdy = True
        elif wready:
            self.r_rdy = False
        if fifo_w:
            if len(self.inner) >= self.FIFO_INNER:
                raise AssertionError("cycle model: the W FIFO overflowed")
            self.inner.append(True)
        self.occ += w_issue - w_hs
        self.w_room = self.occ < self.W_FIFO
        if bresp is not None and bresp != 0 and not self.werr:
            self.werr = True
        bq = self.bq + (a_hs and self.write) - (bresp is not None and self.bq > 0)
        self.bq = bq
        self.posted, self.bq_full = bq != 0, bq == self.MAX_POSTED
        self.aw_sent = aw_sent_next
        self.state = nxt
        self.c = c + 1


class _CycleScheduler(_Scheduler):
    """docs/timing.md "Every event": the ring engine's cycles (the tables above, through
    :meth:`_Scheduler.request`) around the cycle-stepped DMA engine :class:`_CycleDma`."""

    # the ring engine's own faults: from the last command's done to the FAULT state (CHECK,
    # ACT, XIDX, XFAULT, EFAULT, FAULT)
    ENGINE_FAULT = 6

    def __init__(self, data_width: int, dma: _CycleDma, *, lookups: bool = True) -> None:
        super().__init__(data_width, 0, lookups=lookups)
        self.dma = dma
        self.last_done = 0
        self.irq_sets: list[tuple[int, int]] = []  # (cycle, InterruptStatus bit) of each pulse
        self.fault: tuple[int, int] | None = None  # (FAULT state's cycle, cause)

    def _beats(self, txn: Transaction) -> int:
        return txn.beats(self.width)

    def _cmd(self, a: int, kind: str, txns: list) -> int:
        """The command: its done cycle, or :class:`_Faulted`. Whether it faults follows the
        memory's responses as observed; the reference must have said the same."""
        expect = txns[-1].cause if txns and isinstance(txns[-1], FaultMark) else 0
        try:
            d = self.dma.command(a, kind, txns, self._beats)
        except _Faulted as f:
            self.last_done = f.done
            if f.cause != expect:
                raise ValueError(f"cycle model: a {kind} command handed over at {a} ends with "
                                 f"fault {f.cause} at {f.done}; the reference says "
                                 f"{expect or 'no fault'}") from None
            raise
        self.last_done = d
        if expect:
            raise ValueError(f"cycle model: a {kind} command handed over at {a} ends at {d} "
                             f"without the fault {expect} the reference raised (the memory's "
                             "responses differ from the reference's bus errors?)")
        return d

    def read(self, a: int, txns: list) -> int:
        return self._cmd(a, "R", txns)

    def write(self, a: int, txns: list) -> int:
        return self._cmd(a, "W", txns)

    def drain(self, a: int, acc: _Access | None = None) -> int:
        return self._cmd(a, "D", acc.txns if acc is not None else [])

    def zero(self, a: int, nbytes: int) -> int:
        return self._cmd(a, "Z", [nbytes])

    def on_irq(self, pulse: int) -> None:
        self.irq_sets.append((pulse, spec.INT_USED_BUFFER))

    def run_kick(self, rounds: list[_Round], notify: int) -> None:
        t = notify + 2
        try:
            for rnd in rounds:
                if rnd.poll is None:  # the queue check failed: (QNUM,) QFAULT, EFAULT, FAULT
                    self.fault = (t + (4 if rnd.queue_num_bad else 3), rnd.fault)
                    return
                if rnd.fault:  # the avail index: after the poll, the engine's own fault
                    self.read(t, rnd.poll.txns)
                    self.fault = (self.last_done + self.ENGINE_FAULT, rnd.fault)
                    return
                try:
                    t = self.round(t, rnd)
                except StopIteration:  # the ring engine faulted after its last command
                    req = rnd.requests[-1]
                    self.fault = (self.last_done + self.ENGINE_FAULT, req.fault)
                    return
        except _Faulted as f:
            self.fault = (f.done + 1, f.cause)  # the wait state sees done, then FAULT
        finally:
            if self.fault is not None:  # the FAULT state's pulse sets InterruptStatus bit 1
                self.irq_sets.append((self.fault[0], spec.INT_CONFIG_CHANGE))


def _irq_events(sets: list[int], acks: Mapping[int, int], start: int, end: int,
                status: int) -> tuple[list[Event], int]:
    """InterruptStatus from cycle ``start`` (value ``status``) to ``end``: acknowledged bits
    clear, an engine pulse (``sets``: the cycle of each used_irq or fault pulse, with its bit)
    sets; ``irq`` is high while it is non-zero."""
    out = []
    pulses: dict[int, int] = {}
    for cyc, bit in sets:
        pulses[cyc] = pulses.get(cyc, 0) | bit
    for c in range(start, end):
        new = (status & ~acks.get(c, 0)) | pulses.get(c, 0)
        if bool(new) != bool(status):
            out.append(Event("irq_rise" if new else "irq_fall", c + 1))
        status = new
    return out, status


def lower_bound(req: _Request, poll: _Access | None, *, latency: int, data_width: int,
                in_flight: int) -> int:
    """Fewest cycles the request can take, from the bus transactions it cannot avoid
    (``docs/timing.md``, "Lower bound").

    One request in flight: the dependent reads (poll, ring entry, each descriptor) one after
    the other, each paying ``1 + latency + beats``; the header read overlapped with the
    descriptor reads after the first; the data transfer (``1 + latency + beats`` for data the
    device reads, ``1 + beats`` for data it writes); then the status, used element and used
    index beats, and one write-response latency. With more requests in flight an ideal device
    overlaps requests completely, so the bound is the busier data channel's beats.
    """
    def beats(acc: _Access) -> int:
        return sum(t.beats(data_width) for t in acc.txns)

    def read_cost(acc: _Access) -> int:
        return sum(1 + latency + t.beats(data_width) for t in acc.txns)

    by_step: dict[str, list[_Access]] = {}
    for acc in req.accesses:
        by_step.setdefault(acc.step, []).append(acc)
    if in_flight > 1:
        r = sum(beats(a) for a in req.accesses if a.kind == "R")
        w = sum(beats(a) for a in req.accesses if a.kind == "W")
        return max(r, w)
    # an indirect table's read is a dependent read like a later descriptor's (it replaces the
    # reads of its entries)
    descs = [a for a in req.accesses if a.step in ("desc", "table")]
    chain = (read_cost(poll) if poll is not None else 0) + read_cost(by_step["head"][0])
    chain += read_cost(descs[0]) if descs else 0
    later_descs = sum(read_cost(a) for a in descs[1:])
    header = sum(read_cost(a) for a in by_step.get("hdr", []))
    chain += later_descs + max(0, header - later_descs)
    data = 0
    for acc in by_step.get("data", []):
        data += (latency if acc.kind == "R" else 0) + sum(1 + t.beats(data_width)
                                                          for t in acc.txns)
    tail = sum(beats(a) for s in ("status", "used", "uidx") for a in by_step.get(s, []))
    return chain + data + tail + latency + 1


def request_traces(device: TimedDevice, kick: int) -> list[tuple[_Request, _Access | None]]:
    """The requests served after the ``kick``-th notify, each with the poll that found it."""
    out = []
    for rnd in device.kicks[kick]:
        for req in rnd.requests:
            out.append((req, rnd.poll))
    return out
