"""Cycle-exact checks: with the deterministic memory (``tb/detmem.py``) every address handshake
on ``m_axi`` and every completion (the used index's write response) must happen on exactly the
cycle ``models.timing`` predicts from ``docs/timing.md``.

Knobs (:func:`tb.runner.params`): ``latency``, ``handle_mode``, ``seed``, ``requests``,
``batch`` (requests per notify), ``max_sectors``, ``features`` (issue 17: INDIRECT_DESC and
EVENT_IDX negotiated, requests through indirect tables, DISCARD and WRITE_ZEROES with every
status, requests over SEG_MAX and SIZE_MAX; section "Issue 17's features" below).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import cocotb

from models import spec, virtio
from models.timing import TimedDevice
from sw.compare import compare_results
from sw.dma import TO_DEVICE
from sw.driver import BlkRequest
from sw.workload import random_requests

from .runner import params
from .scenario import Pair, Scenario, Session, run_on_both

# -- Issue 17's features (INDIRECT_DESC, EVENT_IDX, SEG_MAX/SIZE_MAX, DISCARD/WRITE_ZEROES) ------
# The driver model of this branch negotiates neither INDIRECT_DESC nor EVENT_IDX and builds
# direct chains only; the bench negotiates the two bits itself (``init(features=...)``), turns
# a submitted chain into an indirect table (read back from the ring, written with the shared
# layout ``models.virtio.DESC`` into a buffer the driver maps) and writes ``used_event`` in
# the avail ring before each notify. Everything else is the driver's.

FEATURE_BITS = 1 << spec.VIRTIO_F_INDIRECT_DESC | 1 << spec.VIRTIO_RING_F_EVENT_IDX


@dataclass(frozen=True)
class Item:
    """A request and the form the bench gives its chain: ``direct`` (the driver's), ``indirect``
    (the same descriptors in a table), ``size_over`` (the header's descriptor longer than
    SIZE_MAX), ``seg_over`` (a table of SEG_MAX + 3 descriptors: empty ones after the header)."""

    req: BlkRequest
    form: str = "direct"


async def negotiate_features(sess: Session) -> None:
    """Re-initialise with INDIRECT_DESC and EVENT_IDX added to what the driver accepts."""
    drv = sess.driver
    await drv.init(features=drv.features | (drv.device_features & FEATURE_BITS))


def _chain(sess: Session, token: int) -> list[int]:
    return sess.driver._inflight[token].descs  # the ring indices of the request's chain


async def make_table(sess: Session, entries: list[tuple[int, int, int, int]]):
    """Map a table of ``(addr, len, flags, next)`` entries; returns ``(buf, handle)``."""
    raw = b"".join(virtio.DESC.pack(*e) for e in entries)
    buf, handle = await sess.driver.map_buffer(len(raw), TO_DEVICE)
    buf.write(0, raw)
    return buf, handle


def linked(descs: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """``(addr, len, flags)`` of each entry, NEXT linked to the following entry."""
    out = []
    for k, (addr, ln, fl, *_) in enumerate(descs):
        more = k + 1 < len(descs)
        fl = (fl & ~spec.VIRTQ_DESC_F_NEXT) | (spec.VIRTQ_DESC_F_NEXT if more else 0)
        out.append((addr, ln, fl, k + 1 if more else 0))
    return out


async def shape(sess: Session, token: int, form: str, seg_limit: int, size_max: int):
    """Give the submitted request ``token`` its form (:class:`Item`); returns the table's
    mapping to release after the request completed, or None."""
    drv = sess.driver
    ring = _chain(sess, token)
    descs = [drv.read_desc(i) for i in ring]
    if form == "direct":
        return None
    if form == "size_over":
        addr, _, fl, nx = descs[0]
        drv.write_desc(ring[0], addr, size_max + 1, fl, nx)
        return None
    if form == "seg_over":  # header, empty readable ones, the rest: seg_max + 3 descriptors
        empty = [(descs[0][0], 0, 0, 0)] * (seg_limit + 3 - len(descs))
        descs = descs[:1] + empty + descs[1:]
    buf, handle = await make_table(sess, linked(descs))
    drv.write_desc(ring[0], handle, len(descs) * virtio.DESC.size, spec.VIRTQ_DESC_F_INDIRECT,
                   0)
    return buf, handle


def set_used_event(sess: Session, value: int) -> None:
    drv = sess.driver
    drv.avail_buf.write(drv.ring.used_event, (value & 0xFFFF).to_bytes(2, "little"))


async def run_items(pair: Pair, ref_s: Session, rtl_s: Session, items: list[Item], *,
                    suppress: bool = False) -> None:
    """One batch (one notify) on the reference, then on the RTL, as ``run_on_both``; with
    EVENT_IDX negotiated ``used_event`` is the driver's next used entry (an interrupt is due)
    or, ``suppress``, the one before it (none is due: the driver polls the used ring)."""
    feats = pair.cfg.features
    seg_limit = feats.seg_limit(pair.cfg.queue_num_max)
    results = []
    for sess in (ref_s, rtl_s):
        drv = sess.driver
        tokens, tables = [], []
        for item in items:
            # the driver's own chain, direct: the bench gives it its form (``shape``)
            token = await drv.submit(dataclasses.replace(item.req, indirect=False))
            tokens.append(token)
            tables.append(await shape(sess, token, item.form, seg_limit, feats.size_max))
        evt = drv.features >> spec.VIRTIO_RING_F_EVENT_IDX & 1
        if evt:
            set_used_event(sess, drv.last_used - (1 if suppress else 0))
        await drv.kick()
        polling = drv.no_interrupt
        drv.no_interrupt = polling or (evt and suppress)
        try:
            results.append(await drv.wait(tokens))
        finally:
            drv.no_interrupt = polling
        for table in tables:
            if table is not None:
                await drv.unmap_buffer(*table)
    compare_results(*results)


def dwz_requests(capacity: int, rng: random.Random, *, big: bool = False) -> list[BlkRequest]:
    """DISCARD and WRITE_ZEROES with every status: OK (a few sectors, none, the UNMAP flag of
    WRITE_ZEROES; the segment split over two descriptors or sharing the header's; ``big``: the
    whole disk), UNSUPP (UNMAP on DISCARD, an unknown flag), IOERR (past the end, more sectors
    than the disk, two segments: no segment read)."""
    d, wz = spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES

    def seg(sector, num, flags=0):
        return virtio.DWZ_SEGMENT.pack(sector, num, flags)
    s = rng.randrange(capacity - 8)
    return [
        BlkRequest(d, 0, data=seg(s, rng.randint(1, 8))),
        BlkRequest(wz, 0, data=seg(s, 4, spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
                   segments=[8, 8]),
        BlkRequest(wz, 0, data=seg(rng.randrange(capacity), 0), header_with_data=True),
        BlkRequest(d, 0, data=seg(s, 2, spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)),
        BlkRequest(wz, 0, data=seg(s, 1, 2)),
        BlkRequest(d, 0, data=seg(capacity - 1, 2)),
        BlkRequest(wz, 0, data=seg(0, 1 << 16), segments=[4, 12]),
        BlkRequest(d, 0, data=seg(s, 1) + seg(s + 2, 1)),
    ] + ([BlkRequest(wz, 0, data=seg(0, capacity))] if big else [])


def feature_items(seed: int, reqs: list[BlkRequest], capacity: int, *,
                  big: bool = False) -> list[Item]:
    """The random requests, each through an indirect table or not (at random), with the
    DISCARD/WRITE_ZEROES requests of :func:`dwz_requests` and two requests over the limits
    (one over SIZE_MAX in a direct chain, one over SEG_MAX in a table) mixed in: one set per
    25 random requests (at least one)."""
    rng = random.Random(seed * 7 + 17)
    items = [Item(r, rng.choice(["direct", "indirect"])) for r in reqs]
    for _ in range(max(1, len(reqs) // 25)):
        extra = [Item(r, rng.choice(["direct", "indirect"]))
                 for r in dwz_requests(capacity, rng, big=big)]
        extra += [Item(BlkRequest(spec.VIRTIO_BLK_T_FLUSH), "size_over"),
                  Item(BlkRequest(spec.VIRTIO_BLK_T_IN, 0, length=512), "seg_over")]
        for item in extra:
            items.insert(rng.randrange(len(items) + 1), item)
    return items


def _fmt(h) -> str:
    return f"{h.kind} addr={h.addr:#x} beats={h.beats}"


async def run_batch(pair: Pair, ref_s, rtl_s, batch: list, n: int) -> None:
    """One batch: requests (``run_on_both``) or :class:`Item` (``run_items``; every third
    batch with the interrupt suppressed by ``used_event`` when EVENT_IDX is negotiated)."""
    if batch and isinstance(batch[0], Item):
        await run_items(pair, ref_s, rtl_s, batch, suppress=n % 3 == 2)
    else:
        await run_on_both(pair, ref_s, rtl_s, batch)


async def check_batches(pair: Pair, ref_s, rtl_s, reqs, *, batch: int, latency: int) -> dict:
    """Run ``reqs`` (requests or :class:`Item`) in batches; after each, compare every
    handshake's cycle with the model."""
    mon = pair.tb.monitor
    ref: TimedDevice = pair.ref
    checked = completions = 0
    for n, i in enumerate(range(0, len(reqs), batch)):
        kick = len(ref.kicks)
        n_rec, n_notify = len(mon.records), len(mon.notify_cycles)
        await run_batch(pair, ref_s, rtl_s, reqs[i:i + batch], n)
        # the engine's closing poll (with EVENT_IDX: used_event, avail_event), then idle
        await pair.tb.wait_cycles(5 * latency + 80)
        assert len(ref.kicks) == kick + 1, "one notify per batch"
        notify = mon.notify_cycles[n_notify]
        sched = ref.schedule(kick, latency=latency, lookups=pair.cfg.translation)
        actual = mon.records[n_rec:]
        for j, (want, got) in enumerate(zip(sched.handshakes, actual, strict=False)):
            if (want.kind, want.addr, want.beats, notify + want.cycle) != \
                    (got.kind, got.addr, got.beats, got.cycle):
                context = "; ".join(
                    f"#{x}: {sched.handshakes[x].kind}{sched.handshakes[x].beats}@"
                    f"{sched.handshakes[x].cycle} vs {actual[x].kind}{actual[x].beats}@"
                    f"{actual[x].cycle - notify}" for x in range(max(0, j - 6), j))
                raise AssertionError(
                    f"(before: {context}) "
                    f"batch at request {i}, transaction #{j}: predicted {_fmt(want)} at cycle "
                    f"{notify + want.cycle} (notify + {want.cycle}); RTL {got.kind} "
                    f"addr={got.addr:#x} beats={got.beats} at cycle {got.cycle} "
                    f"(notify + {got.cycle - notify}); latency {latency}")
        if len(sched.handshakes) != len(actual):
            n = min(len(sched.handshakes), len(actual))
            first = (f"predicted #{n}: {_fmt(sched.handshakes[n])} at notify + "
                     f"{sched.handshakes[n].cycle}" if n < len(sched.handshakes) else
                     f"RTL #{n}: {_fmt(actual[n])} at notify + {actual[n].cycle - notify}")
            raise AssertionError(f"batch at request {i}: {len(sched.handshakes)} handshakes "
                                 f"predicted, {len(actual)} seen (the first {n} on their "
                                 f"cycles; {first})")
        # completions: the write responses of the used index writes, in order
        uidx = [r for r in actual if r.kind == "W" and r.addr == ref_s.driver.used_buf.phys(2)]
        got_c = [r.resp_cycle - notify for r in uidx]
        assert got_c == sched.completions, \
            f"completions: predicted {sched.completions}, RTL {got_c} (cycles after notify)"
        checked += len(actual)
        completions += len(got_c)
    return {"handshakes": checked, "completions": completions}


@cocotb.test()
async def test_cycle_exact(dut):
    p = params()
    latency = p.get("latency", 4)
    seed = p.get("seed", 1)
    pair = Pair(dut, Scenario(handle_mode=p.get("handle_mode", True), seed=seed),
                mem_latency=latency, ref_cls=TimedDevice)
    ref_s, rtl_s = await pair.start()
    capacity = pair.cfg.disk_bytes // 512
    reqs = random_requests(seed, p.get("requests", 40), capacity,
                           max_sectors=p.get("max_sectors", 8))
    if p.get("features"):
        for sess in (ref_s, rtl_s):
            await negotiate_features(sess)
        reqs = feature_items(seed, reqs, capacity)
    stats = await check_batches(pair, ref_s, rtl_s, reqs, batch=p.get("batch", 4),
                                latency=latency)
    pair.check(" (cycle-exact run)")
    pair.log.info("cycle-exact: %d handshakes and %d completions on the predicted cycle "
                  "(latency %d%s)", stats["handshakes"], stats["completions"], latency,
                  feature_summary(pair.ref) if p.get("features") else "")


def feature_summary(ref: TimedDevice) -> str:
    """What issue 17's features the run exercised, from the reference's record."""
    rounds = [r for kick in ref.kicks for r in kick]
    reqs = [q for r in rounds for q in r.requests]
    tables = sum(a.indirect for q in reqs for a in q.accesses)
    zeroes = sum(q.zeroed is not None for q in reqs)
    segs = sum(q.segment for q in reqs)
    over = sum(ref._over_limits(q.descs) for q in reqs)
    return (f"; {tables} indirect tables, {over} requests over SEG_MAX or SIZE_MAX, "
            f"{segs} DISCARD/WRITE_ZEROES segments read, {zeroes} "
            f"zero commands, {sum(r.uevt is not None for r in rounds)} used_event reads "
            f"({sum(r.uevt_irq for r in rounds)} interrupting), "
            f"{sum(bool(r.aevt) for r in rounds)} avail_event writes")


# -- Every event, under random memory timing and faults (docs/timing.md "Every event") ----------

def _first_mismatch(want: list, got: list) -> str | None:
    """The first event (in cycle order) that one list has and the other not, described with
    the other list's nearest event of the same name."""
    w, g = set(want), set(got)
    extra = sorted((e for e in got if e not in w), key=lambda e: e.cycle)
    missing = sorted((e for e in want if e not in g), key=lambda e: e.cycle)
    if not extra and not missing:
        return None
    first_missing = missing[0] if missing else None
    first_extra = extra[0] if extra else None
    if first_missing and (first_extra is None or first_missing.cycle <= first_extra.cycle):
        near = [e for e in got if e.name == first_missing.name and e not in w]
        actual = f"RTL: {near[0].name} {near[0].info} at {near[0].cycle}" if near else \
            "RTL: no such event"
        return (f"predicted {first_missing.name} {first_missing.info} at cycle "
                f"{first_missing.cycle}; {actual}")
    near = [e for e in want if e.name == first_extra.name and e not in g]
    predicted = f"predicted at {near[0].cycle}" if near else "not predicted"
    return (f"RTL {first_extra.name} {first_extra.info} at cycle {first_extra.cycle}; "
            f"{predicted}")


class EventBench:
    """The RTL on :class:`tb.randmem.RandomMemory` and the timed reference; after each notify,
    every recorded event against :meth:`models.timing.TimedDevice.events`."""

    def __init__(self, dut, p: dict) -> None:
        import functools

        from .events import EventRecorder
        from .randmem import install

        self.mode = p.get("mode", "grant")
        self.seed = p.get("seed", 1)
        self.settle = 2 * p.get("max_latency", 12) + 60
        if p.get("features"):  # after the last completion: used_event, a poll, avail_event
            self.settle = 10 * p.get("max_latency", 12) + 200  # and its drain, a poll
        ref_cls = TimedDevice
        if self.mode == "iova":
            from .bench_iova import SMALL, IovaBench
            self.iova = IovaBench(dut, 0, 1 << 22)
            self.iova.policy = SMALL
            self.iova.server.latency = p.get("hv_latency", 5)
            self.pair = self.iova.pair
        else:
            self.iova = None
            self.pair = Pair(dut, Scenario(handle_mode=self.mode == "grant", seed=self.seed),
                             mem_latency=0, ref_cls=functools.partial(ref_cls))
        tb = self.pair.tb
        # (started with the monitor, before any await: the same edge numbering)
        self.rec = EventRecorder(dut)
        self.rec.start()
        self.mem = install(tb, seed=self.seed, stall=p.get("stall", 0.3),
                           max_latency=p.get("max_latency", 12))
        self.ref: TimedDevice = self.pair.ref
        self.compared = {name: 0 for name in ("AR", "AW", "W", "R", "B", "irq_rise",
                                              "irq_fall", "fault", "needs_reset")}
        self.kicks = 0
        self.window_start: int | None = None
        self.features = bool(p.get("features"))
        self.tables: dict[int, list] = {}  # indirect fault cases' tables, per session

    async def start(self):
        if self.iova is not None:
            return await self.iova.start()
        return await self.pair.start()

    def resolved(self) -> dict[int, int] | None:
        if self.iova is None:
            return None
        return dict(enumerate(self.iova.times.resolved))

    async def check_kick(self, kick: int, notify_index: int, what: str) -> None:
        """Compare every event from the last check (or this notify) to now."""
        await self.pair.tb.wait_cycles(self.settle)
        rec, ref = self.rec, self.ref
        notify = rec.notify_cycles[notify_index]
        end = rec.cycle
        start = ref.irq_state[0] if ref.irq_state is not None else notify
        try:
            want = ref.events(kick, rec.mem, notify, end=end, acks=rec.acks,
                              resolved=self.resolved(), lookups=self.pair.cfg.translation)
        except ValueError as exc:
            last = [f"{e.name}@{e.cycle} {e.info}" for e in rec.events
                    if start < e.cycle <= end and e.name not in ("W", "R")][-12:]
            raise AssertionError(f"{what}: {exc} (RTL, notify at {notify}: ... "
                                 f"{', '.join(last)})") from None
        got = [e for e in rec.events if start < e.cycle <= end]
        mismatch = _first_mismatch(want, got)
        if mismatch is not None:
            import os
            if os.environ.get("TIMING_DUMP"):  # what the model was given, for a replay
                import pickle
                with open(os.environ["TIMING_DUMP"], "wb") as f:
                    pickle.dump((ref.kicks[kick], ref.miss_txns, ref.transactions, rec.mem,
                                 notify, end, rec.acks, self.resolved(), ref.data_width), f)
            at = min(e.cycle for e in set(want) ^ set(got))
            near = [r for r in (self.resolved() or {}).values() if at - 60 <= r <= at]

            def before(events):
                return ", ".join(f"{e.name}@{e.cycle} {e.info}" for e in events
                                 if at - 40 <= e.cycle < at and e.name not in ("W", "R"))
            raise AssertionError(
                f"{what} (notify at {notify}): {mismatch} (before, predicted: {before(want)}; "
                f"RTL: {before(got)}" + (f"; MISS_RESOLVE accepted at {near}" if near else "")
                + ")")
        for e in got:
            self.compared[e.name] += 1
        self.kicks += 1

    def forget_irq(self) -> None:
        """After a device reset (InterruptStatus cleared, not modelled): start afresh."""
        self.ref.irq_state = None


def _iova_policy(**policy):
    """An IOVA fault case's mutation: the hypervisor answers the next misses with ``policy``
    (``sw.iommu.MissPolicy``), and both IOTLBs are emptied so that the request misses."""
    async def mutate(bench: EventBench, sess) -> None:
        from sw.iommu import MissPolicy

        if sess is bench.iova.ref_s:
            bench.iova.policy = MissPolicy(size_log2=spec.PAGE_SHIFT, **policy)
            await bench.iova.invalidate_all()
    return mutate


def _iova_cases() -> dict:
    from sw.iommu import Answer
    return {  # name: (request, mutation, expected cause)
        "iova_fail": ("read", _iova_policy(answer=Answer.FAIL), spec.FAULT_IOTLB_FAILED),
        "iova_no_read": ("write", _iova_policy(perms=(False, True)), spec.FAULT_IOTLB_NO_READ),
        "iova_read_only": ("read", _iova_policy(perms=(True, False)), spec.FAULT_READONLY),
    }


def _indirect_case(how: str):
    """A malformed indirect table (fault cause 7, docs/architecture.md): the request's chain
    in a table, then ``how``: ``len`` (a length not a multiple of 16), ``next`` (INDIRECT with
    NEXT), ``nested`` (an INDIRECT descriptor inside the table), ``loop`` (the table's last
    entry points to itself: the walk stops at the queue size)."""
    async def mutate(bench: EventBench, sess, token) -> None:
        drv = sess.driver
        ring = _chain(sess, token)
        descs = linked([drv.read_desc(i) for i in ring])
        if how == "nested":
            descs[1] = (descs[1][0], 16, spec.VIRTQ_DESC_F_INDIRECT | spec.VIRTQ_DESC_F_NEXT, 2)
        elif how == "loop":  # the status descriptor points to itself
            a, ln, fl, _ = descs[-1]
            descs[-1] = (a, ln, fl | spec.VIRTQ_DESC_F_NEXT, len(descs) - 1)
        table = await make_table(sess, descs)
        bench.tables.setdefault(id(sess), []).append(table)
        size = len(descs) * virtio.DESC.size + (8 if how == "len" else 0)
        flags = spec.VIRTQ_DESC_F_INDIRECT | (spec.VIRTQ_DESC_F_NEXT if how == "next" else 0)
        drv.write_desc(ring[0], table[1], size, flags, ring[1] if how == "next" else 0)
    return mutate


INDIRECT_CASES = {f"indirect_{how}": ("read", _indirect_case(how), spec.FAULT_BAD_CHAIN)
                  for how in ("len", "next", "nested", "loop")}


async def _fault_case(bench: EventBench, ref_s, rtl_s, name: str, what: str) -> None:
    from .test_faults import CASES, _request

    if name.startswith("iova_"):
        kind, iova_mutate, cause = _iova_cases()[name]

        async def mutate(sess, token):
            await iova_mutate(bench, sess)
    elif name.startswith("indirect_"):
        kind, ind_mutate, cause = INDIRECT_CASES[name]

        async def mutate(sess, token):
            await ind_mutate(bench, sess, token)
    else:
        kind, mutate, cause, _ = CASES[name]
    pair = bench.pair
    for sess in (ref_s, rtl_s):
        # (a direct chain: the indirect cases put it in a table themselves)
        token = await sess.driver.submit(dataclasses.replace(_request(kind), indirect=False))
        await mutate(sess, token)
        if sess is rtl_s:
            kick = len(bench.ref.kicks) - 1
            n_notify = len(bench.rec.notify_cycles)
            if name.startswith("bus_error") and bench.seed % 2:  # DECERR on odd seeds
                bench.mem.decerr.update(page for _, page in pair.tb.errors.pages)
        await sess.driver.kick()
        try:
            await sess.driver.wait([token])
        except Exception as exc:  # DeviceFault
            if type(exc).__name__ != "DeviceFault":
                raise
        else:
            raise AssertionError(f"{name}: the request completed instead of faulting")
    assert bench.ref.faults[-1].cause == cause
    await bench.check_kick(kick, n_notify, f"{what}, fault {name}")
    # recovery
    pair.tb.errors.clear()
    bench.mem.decerr.clear()
    if bench.iova is not None:
        from .bench_iova import WHOLE
        bench.iova.policy = WHOLE
        await bench.iova.invalidate_all()
    for sess in (ref_s, rtl_s):
        await sess.driver.reset()
        for table in bench.tables.pop(id(sess), []):
            await sess.driver.unmap_buffer(*table)
        await sess.hv.clear_fault()
        await sess.driver.init()
        if bench.features:
            await negotiate_features(sess)
    bench.forget_irq()


@cocotb.test()
async def test_every_event(dut):
    """Every device-driven event on the cycle the model predicts, on random memory timing,
    with faults (params: ``mode`` grant/gpa/iova, ``seed``, ``requests``, ``batch``,
    ``max_sectors``, ``stall``, ``max_latency``, ``faults``: case names of tb/test_faults.py
    run after every ``fault_every`` batches)."""
    p = params()
    bench = EventBench(dut, p)
    ref_s, rtl_s = await bench.start()
    pair = bench.pair
    seed = bench.seed
    capacity = pair.cfg.disk_bytes // 512
    reqs = random_requests(seed, p.get("requests", 40), capacity,
                           max_sectors=p.get("max_sectors", 8))
    if bench.features:
        for sess in (ref_s, rtl_s):
            await negotiate_features(sess)
    if p.get("page_tail"):  # IN data whose first burst is one beat that ends a page: the next
        # page's burst may wait for its lookup (docs/timing.md, "Every event", GPA-only device)
        lanes = pair.cfg.data_width // 8
        reqs += [BlkRequest(spec.VIRTIO_BLK_T_IN, 8 * i, length=1024,
                            offsets=[spec.PAGE_SIZE - lanes]) for i in range(4)]
    if bench.features:
        reqs = feature_items(seed, reqs, capacity, big=p.get("big_zero", False))
    batch = p.get("batch", 4)
    faults = list(p.get("faults", []))
    fault_every = p.get("fault_every", 2)
    for n, i in enumerate(range(0, len(reqs), batch)):
        kick = len(bench.ref.kicks)
        n_notify = len(bench.rec.notify_cycles)
        if bench.iova is not None and p.get("invalidate", True):
            await bench.iova.invalidate_all()  # misses on every page (4 KiB inserts)
        await run_batch(pair, ref_s, rtl_s, reqs[i:i + batch], n)
        assert len(bench.ref.kicks) == kick + 1, "one notify per batch"
        await bench.check_kick(kick, n_notify, f"batch at request {i}")
        if faults and n % fault_every == fault_every - 1:
            await _fault_case(bench, ref_s, rtl_s, faults.pop(0), f"after request {i}")
    for name in faults:
        await _fault_case(bench, ref_s, rtl_s, name, "at the end")
    pair.check(" (event-exact run)")
    pair.log.info("event-exact (%s, seed %d): %d requests, %d notifies, %d faults, %d IOTLB "
                  "misses; every event on the predicted cycle: %s%s", bench.mode, seed,
                  len(reqs), bench.kicks, len(bench.ref.faults), len(bench.ref.misses),
                  ", ".join(f"{k} {v}" for k, v in bench.compared.items()),
                  feature_summary(bench.ref) if bench.features else "")
