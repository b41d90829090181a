"""Adversarial soak of the RTL (issue 4): many seeded streams of ``tb/test_adversarial.py`` in
parallel simulator processes (a ``concurrent.futures`` process pool, one stream per task; each
simulator's output in ``<out>/logs/<seed>.log``), with a ``tqdm`` progress bar and the figures
at the end.

    python -m tb.soak --cases 100000 --seed 1 --jobs 2     (make soak SOAK_CASES=... SOAK_SEED=...)

The plan is a function of ``--seed``, ``--cases`` (or ``--streams``) and ``--per-stream``:
stream ``k`` has seed ``seed + k``, and its kind (hostile stream in handle, GPA or IOVA mode at a
data width, with or without random memory pauses; grant revocation races; reset races; strict
IOVA unmaps racing requests) depends on its seed alone (for a given ``KINDS``: adding the IOVA
kinds moved the kinds of the earlier seeds). Every finished stream leaves
``<out>/<seed>.json``; running the same command again skips them (resumable), and another
``--seed`` covers another range. A stream stops at its first violation, hang or mismatch; the
figures list it with the command that replays it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from tb.runner import ROOT, DeviceConfig, build, run

# (weight, test, data width, params, share of --per-stream)
KINDS = [
    (30, "test_stream", 64, {}, 1.0),
    (10, "test_stream", 64, {"pause": 0.2}, 1.0),
    (15, "test_stream", 32, {"pause": 0.3}, 1.0),
    (15, "test_stream", 128, {}, 1.0),
    (10, "test_stream", 64, {"handle_mode": False}, 1.0),
    (5, "test_stream", 32, {"handle_mode": False, "pause": 0.2}, 1.0),
    (10, "test_revoke_race", 64, {}, 0.15),
    (5, "test_reset_race", 64, {"window": 0}, 0.1),
    # IOVA mode (issue 16, docs/iotlb.md)
    (12, "test_stream", 64, {"iova": True}, 1.0),
    (5, "test_stream", 32, {"iova": True, "pause": 0.3}, 1.0),
    (3, "test_stream", 128, {"iova": True}, 1.0),
    (6, "test_iova_race", 64, {}, 0.15),
]


@dataclass(frozen=True)
class Stream:
    """One shard: a configuration (test, data width, parameters) and a seed, ``cases`` long."""

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


FIELDS = ("cases", "hostile", "faults", "requests", "transactions", "cycles", "misses",
          "violations", "hangs", "mismatches")


def load(out: Path, st: Stream) -> dict | None:
    path = out / f"{st.name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if data.get("spec") == st.spec() else None


def run_stream(st: Stream, out: Path) -> dict:
    """One stream in one simulator process: its figures, also kept in ``<out>/<seed>.json``.
    A pure function of the stream (its configuration and seed) and ``out``, so any process
    pool can run it."""
    report = out / f"{st.name}.part.json"
    report.unlink(missing_ok=True)
    log = out / "logs" / f"{st.name}.log"
    try:
        run("tb.test_adversarial", DeviceConfig(data_width=st.width), testcase=st.test,
            params={**st.params, "seed": st.seed, "cases": st.cases, "report": str(report)},
            results_name=f"soak_{st.seed}", log=log)
        error = ""
    except RuntimeError as exc:
        error = f": {exc}"
    if report.exists():
        got = json.loads(report.read_text())
    else:
        got = {k: 0 for k in FIELDS} | {"failures": [
            f"[mismatch] the simulation ended without a report (log {log}){error}"],
            "mismatches": 1, "wall": 0}
    (out / f"{st.name}.json").write_text(json.dumps({"spec": st.spec(), "figures": got}))
    report.unlink(missing_ok=True)
    return got


def add(fig: dict, got: dict) -> None:
    for k in FIELDS:
        fig[k] += got.get(k, 0)  # (reports from before the IOVA kinds have no "misses")
    fig["wall"] += got.get("wall", 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="adversarial soak of the RTL (issue 4)")
    ap.add_argument("--cases", type=int, default=100_000, help="total cases (default 100000)")
    ap.add_argument("--streams", type=int, default=None, help="number of streams instead")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first stream")
    ap.add_argument("--per-stream", type=int, default=500, help="cases per hostile stream")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "soak")
    args = ap.parse_args(argv)

    streams = plan(args.seed, args.per_stream, None if args.streams else args.cases,
                   args.streams)
    out = args.out.resolve()  # the simulator runs in its own directory
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for width in sorted({st.width for st in streams}):
        build(DeviceConfig(data_width=width), quiet=True)
    total = sum(st.cases for st in streams)
    fig = {k: 0 for k in FIELDS} | {"wall": 0.0}  # wall: the simulator processes' own time
    failures: list[tuple[Stream, str]] = []
    todo: list[Stream] = []
    for st in streams:
        prev = load(out, st)
        if prev is None:
            todo.append(st)
        else:
            add(fig, prev["figures"])
            failures += [(st, f) for f in prev["figures"]["failures"]]
    print(f"soak: {len(streams)} streams, seeds {streams[0].seed}..{streams[-1].seed}, "
          f"{total} cases; {len(streams) - len(todo)} streams already done in {out}, "
          f"{len(todo)} to run on {args.jobs} jobs", flush=True)
    t0 = time.monotonic()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool, \
            tqdm(total=total, initial=total - sum(st.cases for st in todo), unit="case",
                 desc="soak", smoothing=0) as bar:
        running = {pool.submit(run_stream, st, out): st for st in todo}
        for done in as_completed(running):
            st = running[done]
            got = done.result()
            add(fig, got)
            failures += [(st, f) for f in got["failures"]]
            bar.update(st.cases)
            bar.set_postfix(violations=fig["violations"], hangs=fig["hangs"],
                            mismatches=fig["mismatches"])
    wall = time.monotonic() - t0
    print(f"soak: {fig['cases']} cases run ({fig['hostile']} hostile, {fig['faults']} faults, "
          f"{fig['requests']} requests, {fig['transactions']} bus transactions, "
          f"{fig['cycles']} cycles, {fig['misses']} IOTLB misses)")
    print(f"soak: violations {fig['violations']}, hangs {fig['hangs']}, mismatches "
          f"{fig['mismatches']}")
    print(f"soak: wall time {wall:.0f} s for the {len(todo)} streams run now on {args.jobs} jobs"
          f" ({sum(st.cases for st in todo) / wall if wall and todo else 0:.1f} cases/s); "
          f"all {len(streams)} streams together took {fig['wall']:.0f} s of simulator time")
    for st, f in sorted(failures, key=lambda x: x[0].seed):
        print(f"soak: seed {st.seed} ({st.test}, width {st.width}, {st.params}): {f}\n"
              f"      replay: {sys.executable} -m tb.soak --seed {st.seed} --streams 1 "
              f"--per-stream {args.per_stream} --out {out}-replay")
    return 1 if fig["violations"] or fig["hangs"] or fig["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
