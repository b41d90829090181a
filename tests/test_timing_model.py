"""The two timing models of docs/timing.md agree: on the deterministic memory, the cycle model
(``TimedDevice.events``, written for any memory timing) predicts the same address handshakes
and completions as the closed form (``TimedDevice.schedule``) that the RTL is checked against
on that memory (``tests/test_timing_exact.py``). Pure Python: the memory answers the cycle
model's own handshakes as ``tb/detmem.py`` answers the device's."""

from __future__ import annotations

import random

import pytest

from models import spec, virtio
from models.memory import GuestMemory
from models.timing import Event, TimedDevice
from verif.harness import HandDriver


class _Always:
    def __contains__(self, cycle: int) -> bool:
        return True


class DetSide:
    """``tb/detmem.py`` as a :class:`models.timing.MemorySide`: every ready high, read beat
    ``j`` of a burst accepted at ``h`` at ``h + 1 + latency + j`` (bursts queue), a write's
    response ``latency + 1`` after its last beat; computed from the handshakes the model made
    so far (:meth:`bind`)."""

    def __init__(self, latency: int) -> None:
        self.L = latency
        self.arready = self.awready = self.wready = _Always()
        self.events: list[Event] = []
        self.rvalid = self  # (get below)
        self.bvalid = _B(self)

    def bind(self, events: list[Event]) -> None:
        self.events = events

    def get(self, c: int):  # rvalid at edge c: (rlast, rresp)
        free = 0
        for e in self.events:
            if e.name == "AR" and e.cycle < c:
                beats = int(e.info.split("beats=")[1])
                start = max(e.cycle + self.L, free)
                free = start + beats
                if start < c <= start + beats:
                    return (c == start + beats, self.rresp(int(e.info.split()[0][5:], 16)))
        return None

    def rresp(self, addr: int) -> int:
        """The response of the read burst at ``addr``: OKAY."""
        return 0


class _B:
    def __init__(self, side: DetSide) -> None:
        self.side = side

    def get(self, c: int):
        ws = [e.cycle for e in self.side.events if e.name == "W" and e.cycle < c]
        n, due = 0, []
        for e in self.side.events:
            if e.name == "AW":
                n += int(e.info.split("beats=")[1])
                if n <= len(ws):
                    due.append(ws[n - 1] + self.side.L + 1)
        # one response per cycle, in order (the memory's queue)
        t = -1
        for d in due:
            t = max(d, t + 1)
            if t == c:
                return 0
        return None




@pytest.mark.parametrize("latency", [0, 3, 17])
@pytest.mark.parametrize("handle_mode", [False, True], ids=["gpa", "grant"])
def test_cycle_model_matches_closed_form(handle_mode, latency):
    rng = random.Random(latency * 2 + handle_mode)
    dev = TimedDevice(GuestMemory(1 << 20))
    drv = HandDriver(dev, handle_mode=handle_mode)
    drv.setup(16)
    for kick in range(4):
        for _ in range(rng.randint(1, 4)):
            n = rng.choice([512, 1024, 4096, 6144])
            if rng.random() < 0.5:
                drv.request(spec.VIRTIO_BLK_T_IN, rng.randrange(64), read_len=n,
                            data_offset=rng.choice([0, 100, 4000]))
            else:
                drv.request(spec.VIRTIO_BLK_T_OUT, rng.randrange(64),
                            data=bytes(rng.randrange(256) for _ in range(n)),
                            data_offset=rng.choice([0, 8, 3000]))
        drv.notify()
        while drv.take_used():
            pass
        closed = dev.schedule(kick, latency=latency)
        notify = 1000 * (kick + 1) * (latency + 10)
        events = dev.events(kick, DetSide(latency), notify,
                            end=notify + closed.idle + 4 * latency + 100)
        hs = [(e.name[1], int(e.info.split()[0][5:], 16), int(e.info.split("beats=")[1]),
               e.cycle - notify) for e in events if e.name in ("AR", "AW")]
        assert hs == [("R" if h.kind == "R" else "W", h.addr, h.beats, h.cycle)
                      for h in closed.handshakes]
        # completions: the responses of the used-index writes
        uidx = {t.addr for rnd in dev.kicks[kick] for r in rnd.requests for a in r.accesses
                if a.step == "uidx" for t in a.txns}
        aws = [e for e in events if e.name == "AW"]
        bs = [e.cycle - notify for e in events if e.name == "B"]
        assert len(bs) == len(aws)  # (in order: the memory answers in order)
        assert [b for aw, b in zip(aws, bs, strict=True)
                if int(aw.info.split()[0][5:], 16) in uidx] == closed.completions
        rises = [e.cycle - notify for e in events if e.name == "irq_rise"]
        assert rises == closed.irqs[:1] if kick == 0 else rises == []


def _features_kick(drv: HandDriver, rng: random.Random) -> None:
    """Issue 17's features on one kick: requests through indirect tables, DISCARD and
    WRITE_ZEROES (OK with a zero command, UNSUPP, IOERR), a request over SIZE_MAX."""
    for k in range(3):  # indirect: the request's own descriptors in a table
        if k % 2:
            req = drv.request(spec.VIRTIO_BLK_T_IN, rng.randrange(64), read_len=1024,
                              data_offset=rng.choice([0, 100]), publish=False)
        else:
            req = drv.request(spec.VIRTIO_BLK_T_OUT, rng.randrange(64), data=bytes(512),
                              publish=False)
        entries = [(req.header.dma, spec.BLK_HEADER_BYTES, 0),
                   (req.data.dma, req.data.nbytes,
                    spec.VIRTQ_DESC_F_WRITE if req.writable_data else 0),
                   (req.status.dma, 1, spec.VIRTQ_DESC_F_WRITE)]
        table = drv.buffer(16 * len(entries), readonly=True)
        drv.write_buf(table, b"".join(
            virtio.DESC.pack(a, n, f | (spec.VIRTQ_DESC_F_NEXT if i < 2 else 0), i + 1)
            for i, (a, n, f) in enumerate(entries)))
        drv.write_desc(req.head, table.dma, table.nbytes, spec.VIRTQ_DESC_F_INDIRECT)
        drv.publish(req.head)
    for t, seg in ((spec.VIRTIO_BLK_T_DISCARD, (3, 4, 0)),  # OK: 4 sectors zeroed
                   (spec.VIRTIO_BLK_T_WRITE_ZEROES, (5, 0, 1)),  # OK: none
                   (spec.VIRTIO_BLK_T_DISCARD, (3, 1, 1)),  # UNSUPP
                   (spec.VIRTIO_BLK_T_WRITE_ZEROES, (127, 2, 0))):  # IOERR: past the end
        drv.request(t, 0, data=virtio.DWZ_SEGMENT.pack(*seg))
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)  # IOERR: over SIZE_MAX
    drv.write_desc(req.head, req.header.dma, spec.DEFAULT_SIZE_MAX + 1, spec.VIRTQ_DESC_F_NEXT,
                   (req.head + 1) % drv.n)
    drv.publish(req.head)


@pytest.mark.parametrize("latency", [0, 5])
@pytest.mark.parametrize("width", [32, 64, 128])
def test_cycle_model_matches_closed_form_features(width, latency):
    """The same agreement with issue 17's features: an indirect table's extra cycles, the
    segment checks, the zero command's cycles, used_event once a round and avail_event before
    going idle (every kick: HandDriver negotiates EVENT_IDX)."""
    rng = random.Random(width + latency)
    dev = TimedDevice(GuestMemory(1 << 20), data_width=width)
    drv = HandDriver(dev, handle_mode=True)
    drv.setup(32)
    _features_kick(drv, rng)
    drv.notify()
    statuses = drv.take_used()
    assert len(statuses) == 8
    rnds = dev.kicks[0]
    reqs = [r for rnd in rnds for r in rnd.requests]
    assert sum(a.indirect for r in reqs for a in r.accesses) == 3
    assert [r.zeroed for r in reqs if r.segment] == [2048, 0, None, None]
    assert dev._over_limits(reqs[-1].descs)
    assert [bool(r.aevt) for r in rnds] == [False, True, False]  # serve, publish, idle
    closed = dev.schedule(0, latency=latency)
    notify = 1000
    events = dev.events(0, DetSide(latency), notify, end=notify + closed.idle + 100)
    hs = [(e.name[1], int(e.info.split()[0][5:], 16), int(e.info.split("beats=")[1]),
           e.cycle - notify) for e in events if e.name in ("AR", "AW")]
    assert hs == [("R" if h.kind == "R" else "W", h.addr, h.beats, h.cycle)
                  for h in closed.handshakes]
    rises = [e.cycle - notify for e in events if e.name == "irq_rise"]
    assert rises == closed.irqs[:1]
    assert len(closed.irqs) == 1  # one decision for the round (used_event 0: due)


class ErrSide(DetSide):
    """:class:`DetSide` whose read bursts at the addresses ``bad`` answer SLVERR."""

    def __init__(self, latency: int, bad: set[int]) -> None:
        super().__init__(latency)
        self.bad = bad

    def rresp(self, addr: int) -> int:
        return 2 if addr in self.bad else 0


def _table_request(width: int, *, status_flags: int = spec.VIRTQ_DESC_F_WRITE,
                   bus_error: bool = False):
    """A T_IN request through an indirect table of 8 entries of which the chain walks three,
    0 -> 5 -> 2 (header, data, status; the status entry readable: cause 7 at index 2);
    ``bus_error``: the table's read fails (cause 6). Returns the device, driver, request, the
    table buffer."""
    bad: set[int] = set()
    dev = TimedDevice(GuestMemory(1 << 20), data_width=width,
                      bus_error=lambda txn: txn.addr in bad)
    drv = HandDriver(dev)
    drv.setup(16)
    req = drv.request(spec.VIRTIO_BLK_T_IN, 3, read_len=512, publish=False)
    nxt, wr = spec.VIRTQ_DESC_F_NEXT, spec.VIRTQ_DESC_F_WRITE
    ents = {0: (req.header.dma, 16, nxt, 5), 5: (req.data.dma, 512, wr | nxt, 2),
            2: (req.status.dma, 1, status_flags, 0)}
    table = drv.buffer(16 * 8, readonly=True)
    drv.write_buf(table, b"".join(virtio.DESC.pack(*ents.get(i, (0, 0, 0, 0)))
                                  for i in range(8)))
    if bus_error:
        bad.add(table.dma)
    drv.write_desc(req.head, table.dma, table.nbytes, spec.VIRTQ_DESC_F_INDIRECT)
    drv.publish(req.head)
    drv.notify()
    return dev, drv, req, table


def _hs(events, notify):
    return [(e.name, int(e.info.split()[0][5:], 16), int(e.info.split("beats=")[1]),
             e.cycle - notify) for e in events if e.name in ("AR", "AW")]


@pytest.mark.parametrize("latency", [0, 4])
@pytest.mark.parametrize("width", [32, 64, 128])
def test_indirect_table_rows(width, latency):
    """docs/timing.md's indirect table rows, written out: the indirect descriptor's read done
    at d, the table's read (one command: 128 bytes, one burst) handshakes at d + 6 (TABLE_ISSUE
    at d + 4, ADDR, the handshake); its done at t: the walked entries' DESC_CHECKs at t + 5, then
    every 3 cycles (t + 6, then every 4, with a 4-byte bus); the header's first piece is handed
    over at DESC_NEXT, the cycle after the last DESC_CHECK c, its handshake at c + 3. Both models
    (closed form and cycle model) agree on it; a malformed entry faults 5 cycles after its
    DESC_CHECK (the fault event one cycle later), a failed table read the cycle after its done
    (no entry checked)."""
    narrow = width == 32
    first, each = (6, 4) if narrow else (5, 3)
    dev, drv, req, table = _table_request(width)
    assert drv.take_used() == [(req.head, 513)]
    closed = dev.schedule(0, latency=latency)
    hs = closed.handshakes
    ind = next(h for h in hs if h.addr == drv.desc.dma + 16 * req.head)
    d = ind.cycle + latency + ind.beats
    tab = [h for h in hs if table.dma <= h.addr < table.dma + table.nbytes]
    assert [(h.kind, h.addr, h.beats) for h in tab] == [("R", table.dma, 128 // (width // 8))]
    assert tab[0].cycle == d + 6
    done = tab[0].cycle + latency + tab[0].beats
    c = done + first + each * 2  # the third walked entry's DESC_CHECK
    hdr = hs[hs.index(tab[0]) + 1]
    assert (hdr.addr, hdr.cycle) == (req.header.dma, c + 3)
    notify = 500
    events = dev.events(0, DetSide(latency), notify, end=notify + closed.idle + 100)
    assert _hs(events, notify) == [("A" + h.kind, h.addr, h.beats, h.cycle) for h in hs]

    # the status entry (index 2) readable after the writable data: cause 7 at its DESC_CHECK
    dev, drv, req, table = _table_request(width, status_flags=0)
    assert [(f.cause, f.addr) for f in dev.faults] == [(spec.FAULT_BAD_CHAIN, 2)]
    events = dev.events(0, DetSide(latency), notify, end=notify + 400)
    assert _hs(events, notify)[-1][:3] == ("AR", table.dma, 128 // (width // 8))
    assert [e.cycle - notify for e in events if e.name == "fault"] == [c + 5 + 1]

    # the table's read fails: the fault the cycle after its done, like a descriptor read's
    dev, drv, req, table = _table_request(width, bus_error=True)
    assert [(f.cause, f.addr) for f in dev.faults] == [(spec.FAULT_BUS_ERROR, table.dma)]
    events = dev.events(0, ErrSide(latency, {table.dma}), notify, end=notify + 400)
    assert _hs(events, notify)[-1][:3] == ("AR", table.dma, 128 // (width // 8))
    assert [e.cycle - notify for e in events if e.name == "fault"] == [done + 1 + 1]
