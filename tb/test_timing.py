"""Cycle-exact checks: with the deterministic memory (``tb/detmem.py``) every address handshake
on ``m_axi`` and every completion (the used index's write response) must happen on exactly the
cycle ``models.timing`` predicts from ``docs/timing.md``.

Knobs (:func:`tb.runner.params`): ``latency``, ``handle_mode``, ``seed``, ``requests``,
``batch`` (requests per notify), ``max_sectors``.
"""

from __future__ import annotations

import cocotb

from models.timing import TimedDevice
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
