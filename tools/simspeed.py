"""``make simspeed``: the demo workload (``make demo``: both modes) on Icarus and on Verilator
in one run, and the DUT clock cycles each simulates per second, in ``build/simspeed.json``:

    {"icarus": {"cycles_per_second": ...}, "verilator": {"cycles_per_second": ...},
     "ratio": verilator / icarus, ...}

    python -m tools.simspeed [--requests 64] [--data-width 64] [--repeat 3]
                             [--out build/simspeed.json]

A simulator's seconds are the wall time of its simulator processes from the start of the
bench to its end (``tb/demo_bench.py``): the simulator, the bus models, the monitor, the driver
and the reference model, all in that process; not the build and not the process's start-up.
Both builds happen before anything is timed. The workload runs ``--repeat`` times on each
simulator, alternating (Icarus, Verilator, Icarus, ...), and each simulator's fastest run
counts (``runs`` lists them all): on a shared machine the other jobs only ever slow a run
down. The CPU time of the same stretch is written too (``cpu_*``, also the least of the runs):
on a loaded machine it says more than the wall time. Every run of both simulators must
simulate the same number of cycles and match the reference model, or the exit status is 1.

For scale, ``idle`` is each simulator alone: the same device after reset, its clock in C
(cocotb's GPI clock) and no Python at all for ``--idle-cycles`` cycles (one ``Timer``), which
is how fast the simulator runs when nothing in Python is woken per cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Timer

from tb.bench import CLOCK_NS, hold_reset, reset
from tb.demo import run_mode
from tb.runner import ROOT, DeviceConfig, build, check_simulator, params, run

SIMS = ("icarus", "verilator")


@cocotb.test()
async def idle(dut):
    """The simulator alone (see the module): writes cycles, wall_s and cpu_s to ``out``."""
    p = params()
    hold_reset(dut)
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start())
    await reset(dut)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await Timer(p["cycles"] * CLOCK_NS, unit="ns")
    Path(p["out"]).write_text(json.dumps({"cycles": p["cycles"],
                                          "wall_s": time.perf_counter() - wall0,
                                          "cpu_s": time.process_time() - cpu0}))


def measure_idle(cfg: DeviceConfig, sim: str, cycles: int) -> dict:
    out = ROOT / "build" / "demo" / f"simspeed_idle_{sim}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    run("tools.simspeed", cfg, testcase="idle", params={"cycles": cycles, "out": str(out)},
        log=out.with_suffix(".log"), results_name="simspeed_idle", sim=sim)
    if not out.exists():
        raise RuntimeError(f"{sim}: the idle run wrote nothing (see {out.with_suffix('.log')})")
    r = json.loads(out.read_text())
    return {"cycles_per_second": r["cycles"] / r["wall_s"],
            "cpu_cycles_per_second": r["cycles"] / r["cpu_s"], **r}


def measure(cfg: DeviceConfig, sim: str, requests: int, seed: int) -> dict:
    """One run of the workload (both modes) on ``sim``."""
    modes = [run_mode(cfg, handle, requests, seed, False, sim=sim) for handle in (True, False)]
    bad = [m for m in modes if not m.get("matches_reference") or "wall_s" not in m]
    if bad:
        raise RuntimeError(f"{sim}, {bad[0]['mode']} mode: {bad[0].get('mismatch')} "
                           f"(log {bad[0]['log']})")
    return {"cycles": sum(m["total_cycles"] for m in modes),
            "wall_s": sum(m["wall_s"] for m in modes), "cpu_s": sum(m["cpu_s"] for m in modes),
            "modes": {m["mode"]: {"cycles": m["total_cycles"], "wall_s": m["wall_s"],
                                  "cpu_s": m["cpu_s"]} for m in modes}}


def best(runs: list[dict]) -> dict:
    """A simulator's figures from its runs: the fastest wall time and the least CPU time."""
    cycles = {r["cycles"] for r in runs}
    if len(cycles) != 1:
        raise RuntimeError(f"the runs simulated different cycle counts: {sorted(cycles)}")
    n = cycles.pop()
    fast = min(runs, key=lambda r: r["wall_s"])
    cpu = min(r["cpu_s"] for r in runs)
    return {"cycles_per_second": n / fast["wall_s"], "cycles": n, "wall_s": fast["wall_s"],
            "cpu_s": cpu, "cpu_cycles_per_second": n / cpu, "modes": fast["modes"],
            "runs": [{"wall_s": r["wall_s"], "cpu_s": r["cpu_s"]} for r in runs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--data-width", type=int, choices=(32, 64, 128), default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "simspeed.json")
    ap.add_argument("--idle-cycles", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per simulator, alternating; the fastest counts (default 3)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    cfg = DeviceConfig(data_width=args.data_width)
    try:
        for sim in SIMS:
            check_simulator(sim)
            t = time.monotonic()
            build(cfg, quiet=True, sim=sim)
            print(f"{sim}: build ready in {time.monotonic() - t:.1f} s", flush=True)
        runs: dict = {sim: [] for sim in SIMS}
        for i in range(args.repeat):
            for sim in SIMS:
                r = measure(cfg, sim, args.requests, args.seed)
                runs[sim].append(r)
                print(f"run {i + 1}/{args.repeat} {sim:9}  {r['cycles']:,} cycles in "
                      f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU", flush=True)
        result: dict = {}
        for sim in SIMS:
            result[sim] = best(runs[sim])
            result[sim]["idle"] = measure_idle(cfg, sim, args.idle_cycles)
            r = result[sim]
            print(f"{sim:9}  fastest: {r['cycles']:,} cycles in {r['wall_s']:.1f} s wall "
                  f"({r['cycles_per_second']:,.0f} cycles/s), {r['cpu_s']:.1f} s CPU "
                  f"({r['cpu_cycles_per_second']:,.0f} cycles/s); idle, no Python per "
                  f"cycle: {r['idle']['cpu_cycles_per_second']:,.0f} cycles/s CPU", flush=True)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "install" in str(exc) else 1
    ic, ve = result["icarus"], result["verilator"]
    if ic["cycles"] != ve["cycles"]:
        print(f"error: Icarus simulated {ic['cycles']} cycles, Verilator {ve['cycles']}",
              file=sys.stderr)
        return 1
    result["ratio"] = ve["cycles_per_second"] / ic["cycles_per_second"]
    result["cpu_ratio"] = ve["cpu_cycles_per_second"] / ic["cpu_cycles_per_second"]
    result["idle_cpu_ratio"] = (ve["idle"]["cpu_cycles_per_second"]
                                / ic["idle"]["cpu_cycles_per_second"])
    result["workload"] = {"command": "make simspeed", "requests": args.requests,
                          "data_width": args.data_width, "seed": args.seed,
                          "modes": ["handle", "gpa"], "repeat": args.repeat}
    result["load_average"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio verilator/icarus: {result['ratio']:.2f} (wall), {result['cpu_ratio']:.2f} "
          f"(CPU); idle, no Python per cycle {result['idle_cpu_ratio']:.2f} (CPU); load "
          f"average {result['load_average'][0]:.1f} on {result['cpus']} CPUs\n"
          f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
