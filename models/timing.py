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

from models import spec
from models.bus import Transaction
from models.device import Descriptor, ReferenceDevice

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


@dataclass
class _Access:
    step: str  # poll, head, desc, hdr, data, status, used, uidx, drain
    kind: str  # R, W or D (drain)
    txns: list[Transaction]


@dataclass
class _Request:
    descs: list[Descriptor]
    req_type: int
    goal: int  # data bytes moved (0 for flush, errors, unsupported)
    accesses: list[_Access] = field(default_factory=list)


@dataclass
class _Round:
    poll: _Access | None = None
    requests: list[_Request] = field(default_factory=list)


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

    # -- recording ----------------------------------------------------------------------------
    def _run(self) -> None:
        self.kicks.append([])
        super()._run()

    def _round(self) -> bool:
        rnd = _Round()
        self.kicks[-1].append(rnd)
        self._sink = []
        self._step = "poll"
        self._current_round = rnd
        more = super()._round()
        return more

    def _record(self, step: str, kind: str, first: int) -> None:
        txns = self.transactions[first:]
        access = _Access(step, kind, list(txns))
        rnd = self._current_round
        if step == "poll":
            rnd.poll = access
        else:
            rnd.requests[-1].accesses.append(access)

    def dma_read(self, v, n, sink=None):
        first = len(self.transactions)
        try:
            return super().dma_read(v, n, sink)
        finally:
            self._record(self._step, "R", first)
            if self._step == "poll":
                self._step = "head"

    def dma_write(self, v, data):
        first = len(self.transactions)
        try:
            super().dma_write(v, data)
        finally:
            step = self._step
            if step == "used_or_uidx":
                step = "uidx" if v == (self.queue_device + 2) % (1 << 64) else "used"
            self._record(step, "W", first)

    def drain(self) -> None:
        self._record("drain", "D", len(self.transactions))
        super().drain()
        self._step = "used_or_uidx"

    def _serve_one(self, n: int, avail_flags: int) -> None:
        self._current_round.requests.append(_Request([], -1, 0))
        self._step = "head"
        super()._serve_one(n, avail_flags)
        self._step = "head"

    def _walk_chain(self, head: int, n: int) -> list[Descriptor]:
        self._step = "desc"
        descs = super()._walk_chain(head, n)
        self._current_round.requests[-1].descs = descs
        self._step = "hdr"
        return descs

    def _read_range(self, descs, start, length, sink=None):
        req = self._current_round.requests[-1]
        self._step = "hdr" if start == 0 and length == spec.BLK_HEADER_BYTES else "data"
        out = super()._read_range(descs, start, length, sink)
        if self._step == "hdr":
            req.req_type = int.from_bytes(out[:4], "little")
        else:
            req.goal = length
        return out

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
                 resolved: Mapping[int, int] | None = None) -> KickSchedule:
        """Cycles of the ``kick``-th accepted notify's work (docs/timing.md, all rules).

        IOVA mode: every lookup that hit costs what a grant lookup costs. ``resolved`` maps
        the index of a miss (in ``misses``) to the cycle, counted from this notify, in which
        the hypervisor's ``MISS_RESOLVE`` write that answered it was accepted on ``s_hv``; a
        miss of this kick not in ``resolved`` raises ``ValueError``. Without ``resolved``
        (None) every lookup is taken as a hit: the warm-IOTLB prediction of the same requests.
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
                accesses = ([rnd.poll] if rnd.poll else []) + [
                    a for r in rnd.requests for a in r.accesses]
                for acc in accesses:
                    for txn in acc.txns:
                        k = last.get(ids[id(txn)])
                        if k is None:
                            continue
                        if k not in resolved:
                            raise ValueError(f"miss {k} ({self.misses[k][0]:#x}) has no "
                                             "resolve cycle")
                        waits[id(txn)] = resolved[k]
        return _Scheduler(self.data_width, latency, waits).run(self.kicks[kick])


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
                 waits: dict[int, int] | None = None) -> None:
        self.width = data_width
        self.L = latency
        self.waits = waits or {}  # id(transaction) -> its miss's resolve cycle
        self.out = KickSchedule()
        self.last_b = -1  # cycle of the latest write response
        self.outstanding: list[int] = []  # response cycles of posted writes

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

    def drain(self, a: int) -> int:
        return max(a + 1, self.last_b + 1)

    def run(self, rounds: list[_Round]) -> KickSchedule:
        t = 2  # the notify's cycle, then IDLE sees the kick, then QCHECK issues the poll
        for rnd in rounds:
            assert rnd.poll is not None
            d = self.read(t, rnd.poll.txns)
            t = d + 2  # POLL_CHECK, then POLL_ACT issues the head read or goes idle
            if not rnd.requests:
                self.out.idle = t + 1
            for req in rnd.requests:
                d = self.request(t, req)
                self.out.irqs.append(d + 2)  # the registered pulse, then InterruptStatus
                t = d + 1  # HEAD (next entry) or QCHECK (next round) issues
        return self.out

    def request(self, t: int, req: _Request) -> int:
        acc = iter(req.accesses)
        a = next(acc)
        assert a.step == "head"
        d = self.read(t, a.txns)
        t = d + 2  # DESC_FIRST, then DESC_START issues the first descriptor read
        for _ in req.descs:
            a = next(acc)
            assert a.step == "desc", a.step
            d = self.read(t, a.txns)
            # DESC_CHECK, then DESC_NEXT issues the next descriptor read or the header's
            # first piece
            t = d + 2
        # pass 2 sees only the non-empty descriptors (empty ones are not cached)
        descs = [x for x in req.descs if x.len]
        k, got, ends = 0, 0, False
        while True:
            take = min(descs[k].len, spec.BLK_HEADER_BYTES - got)
            a = next(acc)
            assert a.step == "hdr", a.step
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
        write = req.req_type != spec.VIRTIO_BLK_T_OUT
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
        a = next(acc)
        assert a.step == "status", a.step
        d = self.write(t, a.txns)  # STATUS
        assert next(acc).step == "drain"
        d = self.drain(d + 1)  # DRAIN_DATA
        a = next(acc)
        assert a.step == "used", a.step
        d = self.write(d + 1, a.txns)  # USED
        a = next(acc)
        assert a.step == "uidx", a.step
        d = self.write(d + 1, a.txns)  # USED_IDX
        self.out.completions.append(self.last_b)
        assert next(acc).step == "drain"
        return self.drain(d + 1)  # DRAIN_USED: done in this cycle


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
    descs = by_step.get("desc", [])
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
