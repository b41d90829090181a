"""Adversarial soak of the RTL (issue 4): many seeded streams of ``tb/test_adversarial.py`` in
parallel simulator processes, with a progress bar and the figures at the end.

    python -m tb.soak --cases 100000 --seed 1 --jobs 2     (make soak SOAK_CASES=... SOAK_SEED=...)

The plan is a function of ``--seed``, ``--cases`` (or ``--streams``) and ``--per-stream``:
stream ``k`` has seed ``seed + k``, and its kind (hostile stream in handle or GPA mode at a data
width, with or without random memory pauses; grant revocation races; reset races) depends on
its seed alone. Every finished stream leaves ``<out>/<seed>.json``; running the same command
again skips them (resumable), and another ``--seed`` covers another range. A stream stops at
its first violation, hang or mismatch; the figures list it with the command that replays it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tb.runner import ROOT, DeviceConfig, build

# (weight, test, data width, params, share of --per-stream)
KINDS = [
    (30, "test_stream", 64, {}, 1.0),
    (10, "test_stream", 64, {"pause": 0.2}, 1.0),
    (15, "test_stream", 32, {"pause": 0.3}, 1.0),
    (15, "test_stream", 128, {}, 1.0),
    (10, "test_stream", 64, {"handle_mode": False}, 1.0),
    (5, "test_stream", 32, {"handle_mode": False, "pause": 0.2}, 1.0),
    (10, "test_revoke_race", 64, {}, 0.15),
    (5, "test_reset_race", 64, {"window": 1}, 0.1),
]


@dataclass(frozen=True)
class Stream:
    seed: int
    test: str
    width: int
    params: dict
    cases: int

    @property
    def name(self) -> str:
        return f"{self.seed}"

    def spec(self) -> dict:
        return {"seed": self.seed, "test": self.test, "width": self.width,
                "params": self.params, "cases": self.cases}


def stream_for(seed: int, per_stream: int) -> Stream:
    total = sum(k[0] for k in KINDS)
    pick = (seed * 2654435761) % total  # spread kinds over consecutive seeds
    for weight, test, width, params, share in KINDS:
        if pick < weight:
            return Stream(seed, test, width, dict(params), max(1, int(per_stream * share)))
        pick -= weight
    raise AssertionError("unreachable")


def plan(seed: int, per_stream: int, cases: int | None, streams: int | None) -> list[Stream]:
    out: list[Stream] = []
    total = 0
    s = seed
    while (streams is not None and len(out) < streams) or \
            (streams is None and total < (cases or 0)):
        st = stream_for(s, per_stream)
        if streams is None and cases is not None and total + st.cases > cases:
            st = Stream(st.seed, st.test, st.width, st.params, cases - total)
        out.append(st)
        total += st.cases
        s += 1
    return out


def run_worker(spec: dict, report: Path) -> int:
    """In a child process: one stream in one simulator process."""
    from tb.runner import run

    params = {**spec["params"], "seed": spec["seed"], "cases": spec["cases"],
              "report": str(report)}
    tests, failed, _ = run("tb.test_adversarial", DeviceConfig(data_width=spec["width"]),
                           testcase=spec["test"], extra_env={"VHB_PARAMS": json.dumps(params)},
                           results_name=f"soak_{spec['seed']}")
    return 0 if tests == 1 and failed == 0 else 1


FIELDS = ("cases", "hostile", "faults", "requests", "transactions", "cycles", "violations",
          "hangs", "mismatches")


def load(out: Path, st: Stream) -> dict | None:
    path = out / f"{st.name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if data.get("spec") == st.spec() else None


def bar(done: int, total: int, fig: dict, elapsed: float, running: int) -> str:
    width = 30
    frac = done / total if total else 1.0
    fill = int(width * frac)
    eta = f"{elapsed / frac - elapsed:5.0f} s" if 0 < frac < 1 else "  --  "
    return (f"\r[{'#' * fill}{'.' * (width - fill)}] {done:>7}/{total} cases "
            f"{100 * frac:5.1f}%  violations {fig['violations']}  hangs {fig['hangs']}  "
            f"mismatches {fig['mismatches']}  {elapsed:6.0f} s  eta {eta}  ({running} running)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="adversarial soak of the RTL (issue 4)")
    ap.add_argument("--cases", type=int, default=100_000, help="total cases (default 100000)")
    ap.add_argument("--streams", type=int, default=None, help="number of streams instead")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first stream")
    ap.add_argument("--per-stream", type=int, default=500, help="cases per hostile stream")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "soak")
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(json.loads(args.worker), args.report)

    streams = plan(args.seed, args.per_stream, None if args.streams else args.cases,
                   args.streams)
    out = args.out.resolve()  # the simulator runs in its own directory
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for width in sorted({st.width for st in streams}):
        build(DeviceConfig(data_width=width))
    total = sum(st.cases for st in streams)
    fig = {k: 0 for k in FIELDS}
    failures: list[tuple[Stream, str]] = []
    done_cases = 0
    stream_wall = 0.0  # the simulator processes' own time, summed
    todo: list[Stream] = []
    for st in streams:
        prev = load(out, st)
        if prev is None:
            todo.append(st)
            continue
        done_cases += st.cases
        for k in FIELDS:
            fig[k] += prev["figures"][k]
        stream_wall += prev["figures"].get("wall", 0.0)
        failures += [(st, f) for f in prev["figures"]["failures"]]
    print(f"soak: {len(streams)} streams, seeds {streams[0].seed}..{streams[-1].seed}, "
          f"{total} cases; {len(streams) - len(todo)} streams already done in {out}, "
          f"{len(todo)} to run on {args.jobs} jobs", flush=True)
    t0 = time.monotonic()
    running: dict[subprocess.Popen, tuple[Stream, Path, object]] = {}
    queue = list(todo)
    last = 0.0
    while queue or running:
        while queue and len(running) < args.jobs:
            st = queue.pop(0)
            report = out / f"{st.name}.part.json"
            report.unlink(missing_ok=True)
            log = open(out / "logs" / f"{st.name}.log", "w")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                [sys.executable, "-m", "tb.soak", "--worker", json.dumps(st.spec()),
                 "--report", str(report)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running[proc] = (st, report, log)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            st, report, log = running.pop(proc)
            log.close()
            if report.exists():
                got = json.loads(report.read_text())
            else:
                got = {k: 0 for k in FIELDS} | {"failures": [
                    f"[mismatch] the simulation ended without a report (exit {proc.returncode};"
                    f" log {out / 'logs' / (st.name + '.log')})"], "mismatches": 1, "wall": 0}
            for k in FIELDS:
                fig[k] += got[k]
            stream_wall += got.get("wall", 0.0)
            failures += [(st, f) for f in got["failures"]]
            (out / f"{st.name}.json").write_text(json.dumps({"spec": st.spec(),
                                                             "figures": got}))
            report.unlink(missing_ok=True)
            done_cases += st.cases
        now = time.monotonic()
        if now - last > 2 or not (queue or running):
            print(bar(done_cases, total, fig, now - t0, len(running)), end="", file=sys.stderr,
                  flush=True)
            last = now
    wall = time.monotonic() - t0
    print(file=sys.stderr)
    print(f"soak: {fig['cases']} cases run ({fig['hostile']} hostile, {fig['faults']} faults, "
          f"{fig['requests']} requests, {fig['transactions']} bus transactions, "
          f"{fig['cycles']} cycles)")
    print(f"soak: violations {fig['violations']}, hangs {fig['hangs']}, mismatches "
          f"{fig['mismatches']}")
    print(f"soak: wall time {wall:.0f} s for the {len(todo)} streams run now on {args.jobs} jobs"
          f" ({sum(st.cases for st in todo) / wall if wall and todo else 0:.1f} cases/s); "
          f"all {len(streams)} streams together took {stream_wall:.0f} s of simulator time")
    for st, f in failures:
        print(f"soak: seed {st.seed} ({st.test}, width {st.width}, {st.params}): {f}\n"
              f"      replay: {sys.executable} -m tb.soak --seed {st.seed} --streams 1 "
              f"--per-stream {args.per_stream} --out {out}-replay")
    return 1 if fig["violations"] or fig["hangs"] or fig["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
