"""Cycle-exact checks: with the deterministic memory (``tb/detmem.py``) every address handshake
on ``m_axi`` and every completion (the used index's write response) must happen on exactly the
cycle ``models.timing`` predicts from ``docs/timing.md``.

Knobs (:func:`tb.runner.params`): ``latency``, ``handle_mode``, ``seed``, ``requests``,
``batch`` (requests per notify), ``max_sectors``.
"""

from __future__ import annotations

import cocotb

from models import spec
from models.timing import TimedDevice
from sw.driver import BlkRequest
from sw.workload import random_requests

from .runner import params
from .scenario import Pair, Scenario, run_on_both


def _fmt(h) -> str:
    return f"{h.kind} addr={h.addr:#x} beats={h.beats}"


async def check_batches(pair: Pair, ref_s, rtl_s, reqs, *, batch: int, latency: int) -> dict:
    """Run ``reqs`` in batches; after each, compare every handshake's cycle with the model."""
    mon = pair.tb.monitor
    ref: TimedDevice = pair.ref
    checked = completions = 0
    for i in range(0, len(reqs), batch):
        kick = len(ref.kicks)
        n_rec, n_notify = len(mon.records), len(mon.notify_cycles)
        await run_on_both(pair, ref_s, rtl_s, reqs[i:i + batch])
        await pair.tb.wait_cycles(2 * latency + 40)  # the engine's closing poll, then idle
        assert len(ref.kicks) == kick + 1, "one notify per batch"
        notify = mon.notify_cycles[n_notify]
        sched = ref.schedule(kick, latency=latency)
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
        assert len(sched.handshakes) == len(actual), \
            f"{len(sched.handshakes)} handshakes predicted, {len(actual)} seen"
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
    reqs = random_requests(seed, p.get("requests", 40), pair.cfg.disk_bytes // 512,
                           max_sectors=p.get("max_sectors", 8))
    stats = await check_batches(pair, ref_s, rtl_s, reqs, batch=p.get("batch", 4),
                                latency=latency)
    pair.check(" (cycle-exact run)")
    pair.log.info("cycle-exact: %d handshakes and %d completions on the predicted cycle "
                  "(latency %d)", stats["handshakes"], stats["completions"], latency)


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
            raise AssertionError(f"{what}: {exc}") from None
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


async def _fault_case(bench: EventBench, ref_s, rtl_s, name: str, what: str) -> None:
    from .test_faults import CASES, _request

    if name.startswith("iova_"):
        kind, iova_mutate, cause = _iova_cases()[name]

        async def mutate(sess, token):
            await iova_mutate(bench, sess)
    else:
        kind, mutate, cause, _ = CASES[name]
    pair = bench.pair
    for sess in (ref_s, rtl_s):
        token = await sess.driver.submit(_request(kind))
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
        await sess.hv.clear_fault()
        await sess.driver.init()
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
    reqs = random_requests(seed, p.get("requests", 40), pair.cfg.disk_bytes // 512,
                           max_sectors=p.get("max_sectors", 8))
    if p.get("page_tail"):  # IN data whose first burst is one beat that ends a page: the next
        # page's burst may wait for its lookup (docs/timing.md, "Every event", GPA-only device)
        lanes = pair.cfg.data_width // 8
        reqs += [BlkRequest(spec.VIRTIO_BLK_T_IN, 8 * i, length=1024,
                            offsets=[spec.PAGE_SIZE - lanes]) for i in range(4)]
    batch = p.get("batch", 4)
    faults = list(p.get("faults", []))
    fault_every = p.get("fault_every", 2)
    for n, i in enumerate(range(0, len(reqs), batch)):
        kick = len(bench.ref.kicks)
        n_notify = len(bench.rec.notify_cycles)
        if bench.iova is not None and p.get("invalidate", True):
            await bench.iova.invalidate_all()  # misses on every page (4 KiB inserts)
        await run_on_both(pair, ref_s, rtl_s, reqs[i:i + batch])
        assert len(bench.ref.kicks) == kick + 1, "one notify per batch"
        await bench.check_kick(kick, n_notify, f"batch at request {i}")
        if faults and n % fault_every == fault_every - 1:
            await _fault_case(bench, ref_s, rtl_s, faults.pop(0), f"after request {i}")
    for name in faults:
        await _fault_case(bench, ref_s, rtl_s, name, "at the end")
    pair.check(" (event-exact run)")
    pair.log.info("event-exact (%s, seed %d): %d requests, %d notifies, %d faults, %d IOTLB "
                  "misses; every event on the predicted cycle: %s", bench.mode, seed,
                  len(reqs), bench.kicks, len(bench.ref.faults), len(bench.ref.misses),
                  ", ".join(f"{k} {v}" for k, v in bench.compared.items()))
