"""Adversarial soak of the RTL (issue 4): many seeded streams of ``tb/test_adversarial.py``, each
a shard of a :mod:`verif.campaign` campaign run as a Dask task (docs/campaigns.md): on a
``LocalCluster`` of ``--jobs`` workers on this machine, on an existing cluster
(``--scheduler tcp://host:port``), or in this process (``--local``, or ``--jobs 1``). Each
simulator's output goes to ``<out>/logs/<seed>.log`` on the machine that ran it; a progress bar
on a terminal, and the figures at the end.

    python -m tb.soak --cases 100000 --seed 1 --jobs 2     (make soak SOAK_CASES=... SOAK_SEED=...)

The plan is a function of ``--seed``, ``--cases`` (or ``--streams``) and ``--per-stream``:
stream ``k`` has seed ``seed + k``, and its kind (hostile stream in handle, GPA or IOVA mode at a
data width, with or without random memory pauses; grant revocation races; reset races; strict
IOVA unmaps racing requests) depends on its seed alone (for a given ``KINDS``: adding the IOVA
kinds moved the kinds of the earlier seeds). A stream is one shard, keyed by its configuration
(test, width, parameters, cases) and its seed: every finished stream's figures are written
atomically to ``<out>/<seed>-<digest>.json``, running the same command again skips them
(resumable), a stream run twice (a lost worker's task retried) counts once, and another
``--seed`` covers another range. The totals are summed in seed order, so they are those of a
run in one process. A stream stops at its first violation, hang or mismatch; the figures list
it with the command that replays it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tb.runner import ROOT, DeviceConfig, build, run
from verif.campaign import Outcome, Shard, Store, add_where_options, run_campaign, unwind_on_sigterm

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


def shard(st: Stream) -> Shard:
    """The stream as a campaign shard: its configuration and its seed (one seed, ``cases``
    cases)."""
    return Shard("soak", {"test": st.test, "width": st.width, "params": st.params,
                          "cases": st.cases}, st.seed, 1, label=str(st.seed), weight=st.cases)


def stream_of(sh: Shard) -> Stream:
    c = sh.config
    return Stream(sh.seed, c["test"], c["width"], dict(c["params"]), c["cases"])


def _log_dir(out: str) -> Path:
    """``<out>/logs``; on a remote worker where that path cannot be made, the worker's own
    ``build/soak/logs``."""
    try:
        path = Path(out) / "logs"
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = ROOT / "build" / "soak" / "logs"
        path.mkdir(parents=True, exist_ok=True)
    return path


def run_stream(st: Stream, out: Path | str) -> dict:
    """One stream in one simulator process: its figures. A pure function of the stream (its
    configuration and seed): the report goes to a file of its own, so a second run of the same
    stream (a retried task beside a lost one) never mixes with the first."""
    logs = _log_dir(str(out))
    log = logs / f"{st.name}.log"
    fd, part = tempfile.mkstemp(dir=logs, prefix=f"{st.name}.", suffix=".part.json")
    os.close(fd)
    report = Path(part)
    report.unlink()
    try:
        try:
            run("tb.test_adversarial", DeviceConfig(data_width=st.width), testcase=st.test,
                params={**st.params, "seed": st.seed, "cases": st.cases,
                        "report": str(report)},
                results_name=f"soak_{st.seed}", log=log)
            error = ""
        except RuntimeError as exc:
            error = f": {exc}"
        if report.exists():
            return json.loads(report.read_text())
        return {k: 0 for k in FIELDS} | {"failures": [
            f"[mismatch] the simulation ended without a report (log {log}){error}"],
            "mismatches": 1, "wall": 0}
    finally:
        report.unlink(missing_ok=True)


def run_shard(sh: Shard, out: str) -> dict:
    """The campaign's shard function (run on a Dask worker or in this process)."""
    return run_stream(stream_of(sh), out)


def totals(results: list[dict]) -> dict:
    """The figures summed (``wall``: the simulator processes' own time)."""
    fig = {k: 0 for k in FIELDS} | {"wall": 0.0}
    for got in results:
        for k in FIELDS:
            fig[k] += got.get(k, 0)  # (reports from before the IOVA kinds have no "misses")
        fig["wall"] += got.get("wall", 0.0)
    return fig


def soak(streams: list[Stream], out: Path, *, jobs: int = 1, scheduler: str | None = None,
         client=None, progress: bool | None = None) -> Outcome:
    """Run the streams the store in ``out`` lacks (see :func:`verif.campaign.run_campaign`
    for ``jobs``, ``scheduler`` and ``client``); every stream's figures, in plan order."""
    out = Path(out).resolve()  # the simulator runs in its own directory
    (out / "logs").mkdir(parents=True, exist_ok=True)
    store = Store(out)
    if client is None and not scheduler:  # (a remote worker builds what it lacks itself)
        for width in sorted({st.width for st in streams if store.get(shard(st)) is None}):
            build(DeviceConfig(data_width=width), quiet=True)

    def postfix(results: list[dict]) -> dict:
        return {k: sum(r.get(k, 0) for r in results)
                for k in ("violations", "hangs", "mismatches")}

    return run_campaign([shard(st) for st in streams],
                        functools.partial(run_shard, out=str(out)), store, scheduler=scheduler,
                        jobs=jobs, client=client, desc="soak", unit="case", progress=progress,
                        postfix=postfix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="adversarial soak of the RTL (issue 4)")
    ap.add_argument("--cases", type=int, default=100_000, help="total cases (default 100000)")
    ap.add_argument("--streams", type=int, default=None, help="number of streams instead")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first stream")
    ap.add_argument("--per-stream", type=int, default=500, help="cases per hostile stream")
    add_where_options(ap, jobs=os.cpu_count() or 2,
                      what="streams on its workers (make soak SCHEDULER=...)")
    ap.add_argument("--local", action="store_true",
                    help="run every stream in this process, one after the other")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "soak")
    args = ap.parse_args(argv)
    unwind_on_sigterm()
    if args.local:
        args.jobs, args.scheduler = 1, None

    streams = plan(args.seed, args.per_stream, None if args.streams else args.cases,
                   args.streams)
    out = args.out.resolve()
    store = Store(out)
    total = sum(st.cases for st in streams)
    todo = [st for st in streams if store.get(shard(st)) is None]
    where = (f"the Dask cluster at {args.scheduler}" if args.scheduler
             else "this process" if args.jobs <= 1
             else f"a local Dask cluster of {args.jobs} workers")
    print(f"soak: {len(streams)} streams, seeds {streams[0].seed}..{streams[-1].seed}, "
          f"{total} cases; {len(streams) - len(todo)} streams already done in {out}, "
          f"{len(todo)} to run on {where}", flush=True)
    res = soak(streams, out, jobs=args.jobs, scheduler=args.scheduler)
    fig = totals(res.results)
    failures = [(st, f) for st, got in zip(streams, res.results, strict=True)
                for f in got["failures"]]
    ran = sum(sh.size for sh in res.ran)
    print(f"soak: {fig['cases']} cases run ({fig['hostile']} hostile, {fig['faults']} faults, "
          f"{fig['requests']} requests, {fig['transactions']} bus transactions, "
          f"{fig['cycles']} cycles, {fig['misses']} IOTLB misses)")
    print(f"soak: violations {fig['violations']}, hangs {fig['hangs']}, mismatches "
          f"{fig['mismatches']}")
    print(f"soak: wall time {res.wall:.0f} s for the {len(res.ran)} streams run now on "
          f"{res.where} ({ran / res.wall if res.wall and ran else 0:.1f} cases/s); "
          f"all {len(streams)} streams together took {fig['wall']:.0f} s of simulator time")
    for st, f in failures:  # (in seed order: the plan's)
        print(f"soak: seed {st.seed} ({st.test}, width {st.width}, {st.params}): {f}\n"
              f"      replay: {sys.executable} -m tb.soak --seed {st.seed} --streams 1 "
              f"--per-stream {args.per_stream} --local --out {out}-replay")
    return 1 if fig["violations"] or fig["hangs"] or fig["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
