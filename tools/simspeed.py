"""``make simspeed``: the demo workload (``make demo``: both modes) on Icarus and on Verilator
in one run, and the DUT clock cycles each simulates per second, in ``build/simspeed.json``:

    {"icarus": {"cycles_per_second": ...}, "verilator": {"cycles_per_second": ...},
     "ratio": verilator / icarus, ...}

    python -m tools.simspeed [--requests 64] [--data-width 64] [--out build/simspeed.json]

A simulator's seconds are the wall time of its simulator processes from the start of the
bench to its end (``tb/demo_bench.py``): the simulator, the bus models, the monitor, the driver
and the reference model, all in that process; not the build and not the process's start-up.
Both builds happen before anything is timed. The CPU time of the same stretch is written too
(``cpu_*``): on a loaded machine it says more than the wall time. Both simulators must simulate
the same number of cycles and match the reference model, or the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tb.demo import run_mode
from tb.runner import ROOT, DeviceConfig, build, check_simulator

SIMS = ("icarus", "verilator")


def measure(cfg: DeviceConfig, sim: str, requests: int, seed: int) -> dict:
    modes = [run_mode(cfg, handle, requests, seed, False, sim=sim) for handle in (True, False)]
    bad = [m for m in modes if not m.get("matches_reference") or "wall_s" not in m]
    if bad:
        raise RuntimeError(f"{sim}, {bad[0]['mode']} mode: {bad[0].get('mismatch')} "
                           f"(log {bad[0]['log']})")
    cycles = sum(m["total_cycles"] for m in modes)
    wall = sum(m["wall_s"] for m in modes)
    cpu = sum(m["cpu_s"] for m in modes)
    return {"cycles_per_second": cycles / wall, "cycles": cycles, "wall_s": wall,
            "cpu_s": cpu, "cpu_cycles_per_second": cycles / cpu,
            "modes": {m["mode"]: {"cycles": m["total_cycles"], "wall_s": m["wall_s"],
                                  "cpu_s": m["cpu_s"]} for m in modes}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--data-width", type=int, choices=(32, 64, 128), default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "simspeed.json")
    args = ap.parse_args(argv)
    cfg = DeviceConfig(data_width=args.data_width)
    try:
        for sim in SIMS:
            check_simulator(sim)
            t = time.monotonic()
            build(cfg, quiet=True, sim=sim)
            print(f"{sim}: build ready in {time.monotonic() - t:.1f} s", flush=True)
        result: dict = {}
        for sim in SIMS:
            result[sim] = measure(cfg, sim, args.requests, args.seed)
            r = result[sim]
            print(f"{sim:9}  {r['cycles']:,} cycles in {r['wall_s']:.1f} s wall "
                  f"({r['cycles_per_second']:,.0f} cycles/s), {r['cpu_s']:.1f} s CPU "
                  f"({r['cpu_cycles_per_second']:,.0f} cycles/s)", flush=True)
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
    result["workload"] = {"command": "make simspeed", "requests": args.requests,
                          "data_width": args.data_width, "seed": args.seed,
                          "modes": ["handle", "gpa"]}
    result["load_average"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio verilator/icarus: {result['ratio']:.2f} (wall), {result['cpu_ratio']:.2f} "
          f"(CPU); load average {result['load_average'][0]:.1f} on {result['cpus']} CPUs\n"
          f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
