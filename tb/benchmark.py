"""``make bench``: what translating handles costs, measured on the RTL, side by side with GPA
mode in one run.

    python -m tb.benchmark [--quick] [--traffic-only] [--jobs 2] [--out build/bench]

Runs every workload row in both modes under the deterministic memory (``tb/detmem.py``), one
simulator process per (mode, memory latency, data width), checks every completion's cycle
against ``models.timing``, and writes ``results.json``, ``results.md`` and ``overhead.png``.
Cycle counts are exact: each process also runs one row twice and asserts the same count.

Each simulator process is a shard of a :mod:`verif.campaign` campaign (docs/campaigns.md): a
Dask task on a local cluster of ``--jobs`` workers, on a running cluster (``--scheduler
tcp://host:port``, ``make bench SCHEDULER=...``), or in this process (``--jobs 1``). A shard is
keyed by its configuration and a digest of the sources (``rtl/``, ``models/``, ``sw/``,
``verif/``, ``tb/``), its rows kept in ``<out>/shards/``: an interrupted sweep resumes, and a
changed source runs again. ``<out>/raw/`` is rewritten from them.

IOVA mode (``tb/bench_iova.py``, docs/bench-iova.md): the same rows on a warm IOTLB (ratio to
GPA), the device's own cycles per miss beyond the hypervisor's latency, and hit rate and cycles
per request against ``IOTLB_ENTRIES`` (``iova.md``, ``iotlb.png``, the ``iova`` part of
``results.json``).

Traffic rows (``tb/bench_traffic.py``): reads and writes, chains of 3 to 16 descriptors, 1 and 8
in flight, on a memory with random latency and backpressure (``tb/randmem.py``), each row over
several memory seeds (mean, spread), GPA and handle mode side by side with the same seeds
(``traffic.json``, ``traffic.md``). Not cycle-checked against ``models.timing`` here (that is
``tests/test_timing_exact.py``'s event-exact bench); the functional scoreboard checks them.

Issue 17's rows (``tb/bench_features.py``): a 64 KiB request as 16 page-sized segments in a
direct chain and through an indirect table (cycles per request, GPA and handle mode side by
side), and kicks and interrupts per request at 32 in flight without EVENT_IDX and with it
(two used_event policies), from the same workload (``features.json``, ``features.md``). Not
cycle-checked against ``models.timing`` either; the functional scoreboard checks the segment
rows, :class:`sw.workload.ExpectedDisk` the interrupt rows.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from verif.campaign import Shard, Store, add_where_options, run_campaign, unwind_on_sigterm

from .runner import ROOT, DeviceConfig, check_simulator, run

SIZES = (512, 4096, 16384, 65536)
LATENCIES = (0, 4, 32)
WIDTHS = (32, 64, 128)
DEFAULT = {"data_width": 64, "mem_latency": 4}
HV_LATENCIES = (0, 16, 64, 256)  # cycles the hypervisor waits before answering a miss
IOTLB_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
SWEEP = {"in_flight": 8, "pool_pages": 256, "hv_latency": 32, "seed": 1}
# Traffic rows (tb/bench_traffic.py): reads and writes, chains of 3 to 16 descriptors, on a
# memory with random latency and backpressure, averaged over seeds, both modes
TRAFFIC_MEMORY = {"stall": 0.3, "max_latency": 12}
TRAFFIC_ROWS = (
    [{"op": "read", "size": 4096, "descs": 3, "in_flight": n} for n in (1, 8)]
    + [{"op": "write", "size": s, "descs": 3, "in_flight": 1} for s in (512, 4096, 16384)]
    + [{"op": "write", "size": 4096, "descs": 3, "in_flight": 8}]
    + [{"op": op, "size": 4096, "descs": d, "in_flight": 1}
       for op in ("read", "write") for d in (6, 10, 16)])


# Issue 17's rows (tb/bench_features.py): 64 KiB as 16 page-sized segments, direct chain and
# indirect table; interrupts and kicks per request at 32 in flight with and without EVENT_IDX
FEATURE_SEGMENT_SIZE = 65536
FEATURE_LAYOUTS = ("direct", "indirect")
FEATURE_VARIANTS = ("no_event_idx", "enable_cb", "delayed")  # tb/bench_features.VARIANTS
FEATURE_IRQ = {"in_flight": 32, "size": 4096}


def feature_procs(quick: bool, features: str | list[int] = "all") -> list[dict]:
    """The two processes (GPA mode, handle mode) of issue 17's rows. ``features`` is what the
    driver negotiates ("all"; a list of bit numbers runs the rows' plumbing on a build without
    issue 17's features: direct chains only, no EVENT_IDX)."""
    ops = ("read",) if quick else ("read", "write")
    plumbing = features != "all"
    layouts = ("direct",) if plumbing else FEATURE_LAYOUTS
    seg_rows = [{"op": op, "size": FEATURE_SEGMENT_SIZE, "layout": lay, "in_flight": 1}
                for op in ops for lay in layouts]
    irq = {**FEATURE_IRQ, "requests": 128 if quick else 512,
           "variants": ["no_event_idx"] if plumbing else list(FEATURE_VARIANTS)}
    procs = []
    for handle_mode in (False, True):
        mode = "handle" if handle_mode else "gpa"
        rows = seg_rows + [{"size": irq["size"] * irq["requests"] // irq["in_flight"],
                            "in_flight": irq["in_flight"]} for _ in irq["variants"]]
        procs.append({"bench": "features", "name": f"w64_l4_features_{mode}",
                      "data_width": 64, "latency": 4, "rows": rows,
                      "params": {"handle_mode": handle_mode, "latency": 4,
                                 "features": features,
                                 "segments": {"rows": seg_rows, "count": 2 if quick else 4},
                                 "interrupts": irq}})
    return procs


def plan(quick: bool) -> list[dict]:
    """One entry per simulator process: its configuration and rows."""
    procs = []
    for width, latency in itertools.chain(((64, lat) for lat in LATENCIES),
                                          ((w, 4) for w in WIDTHS if w != 64)):
        if quick and (width, latency) != (64, 4):
            continue
        # Data width 64: every pattern and alignment with one request in flight, sequential
        # aligned with 32 in flight (32 x 64 KiB is 2 MiB per row: the sweep's longest rows).
        # Other widths: sequential aligned, and 32 in flight up to 4 KiB.
        full = width == 64 and not quick
        rows = [{"size": s, "pattern": p, "align": a, "in_flight": 1}
                for s in SIZES for p in (("seq", "random") if full else ("seq",))
                for a in (("aligned", "unaligned") if full else ("aligned",))]
        rows += [{"size": s, "pattern": "seq", "align": "aligned", "in_flight": 32}
                 for s in SIZES if width == 64 or s <= 4096]
        for handle_mode in (False, True):
            procs.append({"data_width": width, "latency": latency, "handle_mode": handle_mode,
                          "rows": rows, "repeat": 0})
        # the baseline: the GPA-only device (translation=False: no lookup, no lookup gate)
        procs.append({"data_width": width, "latency": latency, "handle_mode": False,
                      "translation": False, "rows": rows, "repeat": 0})
        if width == 64:  # IOVA on a warm IOTLB: the same rows
            procs.append({"bench": "iova", "name": f"w{width}_l{latency}_iova_warm",
                          "data_width": width, "latency": latency, "rows": rows,
                          "params": {"latency": latency, "warm": rows}})
    miss_rows = [{"size": s, "pattern": "seq", "align": "aligned", "in_flight": 1}
                 for s in (4096, 65536)]
    hv = (0, 64) if quick else HV_LATENCIES
    procs.append({"bench": "iova", "name": "w64_l4_iova_miss", "data_width": 64, "latency": 4,
                  "rows": [{} for _ in range(len(miss_rows) * len(hv))],
                  "params": {"latency": 4, "miss": {"rows": miss_rows, "hv_latencies": hv}}})
    for n in ((8, 32, 128, 512) if quick else IOTLB_SIZES):
        procs.append({"bench": "iova", "name": f"w64_l4_iova_t{n}", "data_width": 64,
                      "latency": 4, "iotlb_entries": n, "rows": [{}],
                      "params": {"latency": 4, "sweep": {
                          **SWEEP, "requests": 128 if quick else 256}}})
    seeds = list(range(1, 3 if quick else 6))
    for handle_mode in (False, True):
        for op in ("read", "write"):
            rows = [r for r in TRAFFIC_ROWS if r["op"] == op]
            mode = "handle" if handle_mode else "gpa"
            procs.append({"bench": "traffic", "name": f"w64_traffic_{op}_{mode}",
                          "data_width": 64, "rows": [r for r in rows for _ in seeds],
                          "params": {"handle_mode": handle_mode, "rows": rows, "seeds": seeds,
                                     "count": 2 if quick else 4, **TRAFFIC_MEMORY}})
    procs += feature_procs(quick)
    # the longest processes first: two workers stay busy to the end
    procs.sort(key=lambda p: -sum(r.get("size", 4096) * r.get("in_flight", 1) *
                                  (2 if p.get("bench") else 1) for r in p["rows"]))
    return procs


def proc_name(proc: dict) -> str:
    """The process's raw file name (without ``.jsonl``)."""
    if proc.get("bench"):  # iova, traffic
        return proc["name"]
    return f"w{proc['data_width']}_l{proc['latency']}_{sweep_mode(proc)}"


def sweep_mode(proc: dict) -> str:
    """A sweep process's mode: ``handle``, ``gpa`` (the device in GPA mode) or ``gpa-only``
    (the GPA-only device, ``translation=False``)."""
    if not proc.get("translation", True):
        return "gpa-only"
    return "handle" if proc["handle_mode"] else "gpa"


def sources_digest() -> str:
    """Of everything a bench process's figures depend on (the shards' keys include it)."""
    h = hashlib.sha256()
    for top in ("rtl", "models", "sw", "verif", "tb"):
        for path in sorted((ROOT / top).rglob("*.py")):
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def shard(proc: dict, digest: str) -> Shard:
    return Shard("bench", {"proc": proc, "sources": digest}, 1, 1, label=proc_name(proc),
                 weight=len(proc["rows"]))


def run_shard(sh: Shard, client: tuple[str, str] = ("", "")) -> dict:
    """The campaign's shard function (a Dask worker or this process): the process's raw rows
    (its ``.jsonl`` text), written to a directory of its own on the machine that runs it. A
    worker in another checkout than the ``client``'s (host, repository) must have the same
    sources."""
    if (socket.gethostname(), str(ROOT)) != tuple(client) and \
            sources_digest() != sh.config["sources"]:
        raise RuntimeError(f"the sources of the worker on {socket.gethostname()} (in {ROOT}) "
                           f"are not the client's: check out the same commit on every worker")
    tmp = Path(tempfile.mkdtemp(prefix="vhb-bench-"))
    try:
        return {"jsonl": run_proc(sh.config["proc"], tmp).read_text()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_proc(proc: dict, out_dir: Path) -> Path:
    """Run one simulator process of the plan; returns its raw ``.jsonl`` file."""
    out = (out_dir / "raw" / f"{proc_name(proc)}.jsonl").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    kind = proc.get("bench")
    if kind == "features":
        module, testcase, params = "tb.bench_features", "test_features", proc["params"]
        cfg = DeviceConfig(data_width=proc["data_width"])
        name = f"bench_{proc['name']}"
    elif kind == "traffic":
        module, testcase, params = "tb.bench_traffic", "test_traffic", proc["params"]
        cfg = DeviceConfig(data_width=proc["data_width"])
        name = f"bench_{proc['name']}"
    elif kind == "iova":
        module, testcase, params = "tb.bench_iova", "test_iova", proc["params"]
        cfg = DeviceConfig(data_width=proc["data_width"],
                           iotlb_entries=proc.get("iotlb_entries", DeviceConfig.iotlb_entries))
        name = f"bench_{proc['name']}"
    else:
        mode = sweep_mode(proc)
        module, testcase = "tb.bench_sweep", "test_sweep"
        cfg = DeviceConfig(data_width=proc["data_width"],
                           translation=proc.get("translation", True))
        params = {**{k: proc[k] for k in ("handle_mode", "latency", "rows", "repeat")},
                  "mode": mode}
        name = f"bench_l{proc['latency']}_{mode}"
    tests, failed, xml = run(module, cfg, testcase=testcase,
                             params={**params, "out": str(out)},
                             extra_env={"COCOTB_LOG_LEVEL": "WARNING"}, results_name=name)
    if tests != 1 or failed:
        raise RuntimeError(f"benchmark process {out.name} failed; see {xml}")
    return out


def rows_from(raw_files: list[Path]) -> list[dict]:
    rows = []
    seen = set()
    for path in raw_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "repeat_check" in r or r.get("kind") in ("miss", "sweep", "traffic", "segments",
                                                        "interrupts"):
                continue
            ident = tuple(r[k] for k in ("mode", "size", "pattern", "align", "in_flight",
                                         "mem_latency", "data_width"))
            if ident in seen:  # the same row measured twice (exact counts: keep one)
                continue
            seen.add(ident)
            n = r["requests"]
            cpr = r["cycles"] / n
            if r.get("kind") == "warm":  # (IOVA: the same requests' bound, from the GPA row)
                r = {**r, "translations": r["hits"], "bound": None, "data_beats": None}
            rows.append({
                "workload": f"{r['pattern']}-{r['align']}-read",
                "mode": r["mode"],
                "request_bytes": r["size"],
                "in_flight": r["in_flight"],
                "mem_latency": r["mem_latency"],
                "data_width": r["data_width"],
                "cycles_per_request": round(cpr, 3),
                "bytes_per_cycle": round(r["size"] / cpr, 4),
                "bus_utilisation": (None if r["data_beats"] is None
                                    else round(r["data_beats"] / r["cycles"], 4)),
                "translations_per_request": round(r["translations"] / n, 3),
                "bound_cycles_per_request": (None if r["bound"] is None
                                             else round(r["bound"] / n, 3)),
                "above_bound": None if r["bound"] is None else round(cpr / (r["bound"] / n), 4),
            })
    key = ("workload", "request_bytes", "in_flight", "mem_latency", "data_width")
    gpa = {tuple(r[k] for k in key): r for r in rows if r["mode"] == "gpa"}
    base = {tuple(r[k] for k in key): r for r in rows if r["mode"] == "gpa-only"}
    for r in rows:
        g = gpa.get(tuple(r[k] for k in key))
        r["handle_gpa_ratio"] = round(r["cycles_per_request"] / g["cycles_per_request"], 4) \
            if g else None
        b = base.get(tuple(r[k] for k in key))  # against the GPA-only device: the true cost
        r["handle_baseline_ratio"] = (round(r["cycles_per_request"] / b["cycles_per_request"], 4)
                                      if b and r["mode"] != "gpa-only" else None)
        if g and r["bound_cycles_per_request"] is None:  # IOVA: the same bus transactions
            for k in ("bus_utilisation", "bound_cycles_per_request"):
                r[k] = g[k]
            r["above_bound"] = round(r["cycles_per_request"] / g["bound_cycles_per_request"], 4)
    rows.sort(key=lambda r: (r["data_width"], r["mem_latency"], r["workload"], r["in_flight"],
                             r["request_bytes"], r["mode"]))
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| data width | latency | workload | in flight | request | mode | cycles/req | "
            "bytes/cycle | bus util. | xlate/req | bound | x bound | handle/GPA | "
            "/ GPA-only device |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    def f(v, spec):
        return "" if v is None else format(v, spec)

    lines = [f"| {r['data_width']} | {r['mem_latency']} | {r['workload']} | {r['in_flight']} "
             f"| {r['request_bytes']} | {r['mode']} | {r['cycles_per_request']:.1f} | "
             f"{r['bytes_per_cycle']:.2f} | {f(r['bus_utilisation'], '.3f')} | "
             f"{r['translations_per_request']:.1f} | "
             f"{f(r['bound_cycles_per_request'], '.1f')} | {f(r['above_bound'], '.3f')} | "
             f"{'' if r['handle_gpa_ratio'] is None else format(r['handle_gpa_ratio'], '.4f')} | "
             f"{f(r['handle_baseline_ratio'], '.4f')} |"
             for r in rows]
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for latency in LATENCIES:
        for n_in, style in ((1, "-o"), (32, "--s")):
            pts = sorted((r["request_bytes"], r["handle_gpa_ratio"]) for r in rows
                         if r["mode"] == "handle" and r["data_width"] == 64
                         and r["mem_latency"] == latency and r["in_flight"] == n_in
                         and r["workload"] == "seq-aligned-read")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                        label=f"latency {latency}, {n_in} in flight")
    ax.set_xscale("log", base=2)
    ax.set_xticks(SIZES, [f"{s // 1024} KiB" if s >= 1024 else f"{s} B" for s in SIZES])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylim(0.98, 1.06)
    ax.set_xlabel("request size")
    ax.set_ylabel("handle / GPA cycles per request")
    ax.set_title("Cost of handle translation (data width 64, sequential aligned reads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def iova_from(raw_files: list[Path]) -> dict:
    """The IOVA miss and IOTLB-size rows (docs/bench-iova.md defines every figure)."""
    miss, sweep = [], []
    for path in raw_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "miss":
                extra = r["cycles"] - r["warm_cycles"]
                miss.append({
                    "workload": f"{r['pattern']}-{r['align']}-read", "request_bytes": r["size"],
                    "in_flight": r["in_flight"], "mem_latency": r["mem_latency"],
                    "data_width": r["data_width"], "iotlb_entries": r["iotlb_entries"],
                    "hv_latency": r["hv_latency"], "requests": r["requests"],
                    "misses": r["misses"], "misses_per_request": round(r["misses"] /
                                                                       r["requests"], 3),
                    "cycles_per_request": round(r["cycles"] / r["requests"], 3),
                    "warm_cycles_per_request": round(r["warm_cycles"] / r["requests"], 3),
                    "held_per_miss": round(r["held"] / r["misses"], 3),
                    "extra_per_miss": round(extra / r["misses"], 3),
                    "own_cycles_per_miss": round((extra - r["held"]) / r["misses"], 3),
                })
            elif r.get("kind") == "sweep":
                # every page access ends in one hit (a miss's second lookup hits: the page was
                # inserted), so HITS counts accesses and HITS - MISSES the first-time hits
                lookups = r["hits"]
                sweep.append({
                    "iotlb_entries": r["iotlb_entries"], "pool_pages": r["pool_pages"],
                    "requests": r["requests"], "in_flight": r["in_flight"],
                    "hv_latency": r["hv_latency"], "mem_latency": r["mem_latency"],
                    "data_width": r["data_width"],
                    "hit_rate": round((r["hits"] - r["misses"]) / lookups, 4),
                    "lookups_per_request": round(lookups / r["requests"], 3),
                    "misses_per_request": round(r["misses"] / r["requests"], 3),
                    "cycles_per_request": round(r["cycles"] / r["requests"], 3),
                    "warm_cycles_per_request": round(r["warm_predicted"] / r["requests"], 3),
                    "held_per_request": round(r["held"] / r["requests"], 3),
                    "own_cycles_per_miss": (round((r["cycles"] - r["warm_predicted"]
                                                   - r["held"]) / r["misses"], 3)
                                            if r["misses"] else None),
                })
    miss.sort(key=lambda r: (r["request_bytes"], r["hv_latency"]))
    sweep.sort(key=lambda r: r["iotlb_entries"])
    return {"miss": miss, "iotlb_size": sweep}


def iova_markdown(rows: list[dict], iova: dict) -> str:
    out = ["## IOVA on a warm IOTLB against GPA (data width 64)\n",
           "| latency | workload | in flight | request | GPA cycles/req | IOVA cycles/req | "
           "IOVA/GPA |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] == "iova":
            ratio = r["handle_gpa_ratio"]
            g = f"{r['cycles_per_request'] / ratio:.1f}" if ratio else ""
            out.append(f"| {r['mem_latency']} | {r['workload']} | {r['in_flight']} | "
                       f"{r['request_bytes']} | {g} | {r['cycles_per_request']:.1f} | "
                       f"{'' if ratio is None else format(ratio, '.4f')} |")
    out += ["", "## IOTLB misses: the device's own cycles per miss (memory latency 4)\n",
            "| request | hv latency | misses/req | cycles/req | warm cycles/req | "
            "held/miss | extra/miss | own cycles/miss |", "|---|---|---|---|---|---|---|---|"]
    for r in iova["miss"]:
        out.append(f"| {r['request_bytes']} | {r['hv_latency']} | {r['misses_per_request']:.2f}"
                   f" | {r['cycles_per_request']:.1f} | {r['warm_cycles_per_request']:.1f} | "
                   f"{r['held_per_miss']:.2f} | {r['extra_per_miss']:.2f} | "
                   f"{r['own_cycles_per_miss']:.2f} |")
    out += ["", "## Hit rate against IOTLB entries (4 KiB reads over a pool of pages)\n",
            "| IOTLB entries | pool pages | requests | hit rate | misses/req | cycles/req | "
            "warm cycles/req | hv held/req | own cycles/miss |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in iova["iotlb_size"]:
        own = "" if r["own_cycles_per_miss"] is None else f"{r['own_cycles_per_miss']:.2f}"
        out.append(f"| {r['iotlb_entries']} | {r['pool_pages']} | {r['requests']} | "
                   f"{r['hit_rate']:.4f} | {r['misses_per_request']:.2f} | "
                   f"{r['cycles_per_request']:.1f} | {r['warm_cycles_per_request']:.1f} | "
                   f"{r['held_per_request']:.1f} | {own} |")
    return "\n".join(out) + "\n"


def traffic_from(raw_files: list[Path]) -> list[dict]:
    """The traffic rows: per row and mode, cycles per request over the memory seeds (mean,
    population standard deviation, min, max), and handle/GPA (the ratio of the means, and the
    range of the per-seed ratios: both modes ran the same seeds)."""
    import statistics

    per: dict[tuple, dict[int, float]] = {}
    meta: dict[tuple, dict] = {}
    for path in raw_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") != "traffic":
                continue
            key = (r["op"], r["size"], r["descs"], r["in_flight"], r["mode"])
            per.setdefault(key, {})[r["seed"]] = r["cycles"] / r["requests"]
            meta[key] = r
    rows = []
    for key in sorted(per, key=lambda k: (k[0], k[3], k[2], k[1], k[4])):
        op, size, descs, n_in, mode = key
        cpr = per[key]
        vals = list(cpr.values())
        mean = statistics.fmean(vals)
        row = {"op": op, "request_bytes": size, "descs": descs, "in_flight": n_in,
               "mode": mode, "seeds": len(vals), "stall": meta[key]["stall"],
               "max_latency": meta[key]["max_latency"],
               "data_width": meta[key]["data_width"],
               "cycles_per_request": round(mean, 2),
               "stdev": round(statistics.pstdev(vals), 2),
               "min": round(min(vals), 2), "max": round(max(vals), 2),
               "bytes_per_cycle": round(size / mean, 4)}
        gpa = per.get((op, size, descs, n_in, "gpa"))
        if mode != "gpa" and gpa:
            ratios = [cpr[s] / gpa[s] for s in cpr if s in gpa]
            row["handle_gpa_ratio"] = round(mean / statistics.fmean(gpa.values()), 4)
            row["ratio_min"], row["ratio_max"] = round(min(ratios), 4), round(max(ratios), 4)
        rows.append(row)
    return rows


def traffic_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    r0 = rows[0]
    out = [f"## Real traffic: random memory (each ready low with probability {r0['stall']}, "
           f"read data and write responses 2 to {r0['max_latency'] + 2} cycles after the "
           f"address or last data beat), data width "
           f"{r0['data_width']}, mean over {r0['seeds']} seeds\n",
           "| op | request | descriptors | in flight | mode | cycles/req | stdev | min | max | "
           "bytes/cycle | handle/GPA | per-seed range |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("handle_gpa_ratio")
        rng = f"{r['ratio_min']:.4f} to {r['ratio_max']:.4f}" if ratio is not None else ""
        out.append(f"| {r['op']} | {r['request_bytes']} | {r['descs']} | {r['in_flight']} | "
                   f"{r['mode']} | {r['cycles_per_request']:.1f} | {r['stdev']:.1f} | "
                   f"{r['min']:.1f} | {r['max']:.1f} | {r['bytes_per_cycle']:.2f} | "
                   f"{'' if ratio is None else format(ratio, '.4f')} | {rng} |")
    return "\n".join(out) + "\n"


VARIANT_TEXT = {
    "no_event_idx": "no EVENT_IDX (every other feature negotiated): an interrupt unless "
                    "avail.flags has NO_INTERRUPT (never set here), a notify after each batch",
    "enable_cb": "EVENT_IDX, used_event = last_used_idx written before each sleep (Linux "
                 "virtqueue_enable_cb, as virtblk_done calls it); a notify only when "
                 "avail_event asks (virtqueue_kick_prepare)",
    "delayed": "EVENT_IDX, used_event = last_used_idx + 3/4 of the requests outstanding "
               "(Linux virtqueue_enable_cb_delayed); a notify only when avail_event asks",
}


def features_from(raw_files: list[Path]) -> dict:
    """Issue 17's rows: ``segments`` (cycles per request; indirect/direct and handle/GPA
    ratios) and ``interrupts`` (kicks, interrupts and irq rises per request)."""
    seg, irq = [], []
    for path in raw_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "segments":
                cpr = r["cycles"] / r["requests"]
                seg.append({"op": r["op"], "request_bytes": r["size"], "layout": r["layout"],
                            "segments": r["size"] // 4096, "in_flight": r["in_flight"],
                            "mode": r["mode"], "mem_latency": r["mem_latency"],
                            "data_width": r["data_width"], "requests": r["requests"],
                            "cycles_per_request": round(cpr, 3),
                            "bytes_per_cycle": round(r["size"] / cpr, 4)})
            elif r.get("kind") == "interrupts":
                n = r["requests"]
                irq.append({"variant": r["variant"], "mode": r["mode"], "requests": n,
                            "in_flight": r["in_flight"], "request_bytes": r["size"],
                            "event_idx": r["event_idx"], "policy": r["policy"],
                            "mem_latency": r["mem_latency"], "data_width": r["data_width"],
                            "kicks_per_request": round(r["kicks"] / n, 4),
                            "interrupts_per_request": round(r["interrupts"] / n, 4),
                            "irq_rises_per_request": round(r["irq_rises"] / n, 4),
                            "cycles_per_request": round(r["cycles"] / n, 3),
                            "text": VARIANT_TEXT[r["variant"]]})
    by = {(r["op"], r["request_bytes"], r["in_flight"], r["layout"], r["mode"]): r for r in seg}
    for r in seg:
        d = by.get((r["op"], r["request_bytes"], r["in_flight"], "direct", r["mode"]))
        g = by.get((r["op"], r["request_bytes"], r["in_flight"], r["layout"], "gpa"))
        r["indirect_direct_ratio"] = (round(r["cycles_per_request"] / d["cycles_per_request"],
                                            4) if d and r["layout"] == "indirect" else None)
        r["handle_gpa_ratio"] = (round(r["cycles_per_request"] / g["cycles_per_request"], 4)
                                 if g and r["mode"] != "gpa" else None)
    seg.sort(key=lambda r: (r["op"], r["in_flight"], r["layout"], r["mode"]))
    order = {v: i for i, v in enumerate(FEATURE_VARIANTS)}
    irq.sort(key=lambda r: (r["mode"], order.get(r["variant"], 99)))
    return {"segments": seg, "interrupts": irq}


def features_markdown(feat: dict) -> str:
    def f(v, spec):
        return "" if v is None else format(v, spec)

    out = []
    if feat["segments"]:
        r0 = feat["segments"][0]
        out += [f"## A 64 KiB request as 16 page-sized segments: direct chain and indirect "
                f"table (data width {r0['data_width']}, memory latency {r0['mem_latency']})\n",
                "Direct: 18 descriptors in the ring (header, 16 data, status). Indirect: one "
                "ring descriptor naming an 18-entry table the driver allocated and mapped "
                "device-readable like a data buffer (a read-only grant in handle mode). The "
                "driver negotiated every feature but EVENT_IDX in both. Cycles from the notify "
                "to the last "
                "used-index write response.\n",
                "| op | request | segments | in flight | layout | mode | cycles/req | "
                "bytes/cycle | indirect/direct | handle/GPA |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in feat["segments"]:
            out.append(f"| {r['op']} | {r['request_bytes']} | {r['segments']} | "
                       f"{r['in_flight']} | {r['layout']} | {r['mode']} | "
                       f"{r['cycles_per_request']:.1f} | {r['bytes_per_cycle']:.2f} | "
                       f"{f(r['indirect_direct_ratio'], '.4f')} | "
                       f"{f(r['handle_gpa_ratio'], '.4f')} |")
        out.append("")
    if feat["interrupts"]:
        r0 = feat["interrupts"][0]
        out += [f"## Kicks and interrupts per request at {r0['in_flight']} in flight "
                f"({r0['requests']} reads of {r0['request_bytes']} bytes, the same workload "
                f"in every row)\n",
                "The driver keeps the queue full: each time it wakes it reaps every "
                "completion, submits as many new requests and calls notify once. Interrupts: "
                "the wakes that found InterruptStatus bit 0 set; irq rises: as the monitor "
                "saw them.\n",
                "| mode | variant | kicks/req | interrupts/req | irq rises/req | cycles/req | "
                "what the driver does |", "|---|---|---|---|---|---|---|"]
        for r in feat["interrupts"]:
            out.append(f"| {r['mode']} | {r['variant']} | {r['kicks_per_request']:.3f} | "
                       f"{r['interrupts_per_request']:.3f} | "
                       f"{r['irq_rises_per_request']:.3f} | {r['cycles_per_request']:.1f} | "
                       f"{r['text']} |")
    return "\n".join(out) + "\n" if out else ""


def print_features(feat: dict) -> None:
    if feat["segments"]:
        print("64 KiB as 16 page segments, cycles per request (op layout: GPA, handle, "
              "handle/GPA; indirect/direct):")
        for r in feat["segments"]:
            if r["mode"] == "handle":
                g = next(x for x in feat["segments"] if x["mode"] == "gpa" and all(
                    x[k] == r[k] for k in ("op", "layout", "in_flight", "request_bytes")))
                print(f"  {r['op']:5s} {r['layout']:8s} @{r['in_flight']}: "
                      f"{g['cycles_per_request']:8.1f} {r['cycles_per_request']:8.1f}  "
                      f"{r['handle_gpa_ratio']:.4f}  gpa {g['indirect_direct_ratio'] or '':}"
                      f" handle {r['indirect_direct_ratio'] or ''}")
    if feat["interrupts"]:
        print("Kicks and interrupts per request at 32 in flight (mode variant: kicks, "
              "interrupts):")
        for r in feat["interrupts"]:
            print(f"  {r['mode']:6s} {r['variant']:12s}: {r['kicks_per_request']:.3f} "
                  f"{r['interrupts_per_request']:.3f}")


def iova_plot(sweep: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sweep:
        return
    n = [r["iotlb_entries"] for r in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n, [r["hit_rate"] for r in sweep], "-o", color="tab:blue", label="hit rate")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("IOTLB entries")
    ax.set_ylabel("hit rate (page accesses)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(n, [r["cycles_per_request"] for r in sweep], "--s", color="tab:red",
             label="cycles per request")
    ax2.plot(n, [r["warm_cycles_per_request"] for r in sweep], ":", color="grey",
             label="cycles per request, all hits")
    ax2.set_ylabel("cycles per request", color="tab:red")
    ax2.set_ylim(0, None)
    s = sweep[0]
    ax.set_title(f"4 KiB reads over {s['pool_pages']} pages, {s['in_flight']} in flight, "
                 f"hypervisor latency {s['hv_latency']}", fontsize=10)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    add_where_options(ap, jobs=2, what="simulator processes on its workers")
    ap.add_argument("--quick", action="store_true",
                    help="data width 64, latency 4, sequential aligned rows only")
    ap.add_argument("--traffic-only", action="store_true",
                    help="run the traffic rows only (random memory timing: traffic.md)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild results.json/md and overhead.png from the rows already in "
                         "<out>/raw (for instance after an interrupted sweep)")
    args = ap.parse_args(argv)
    unwind_on_sigterm()
    if args.report_only:
        files = sorted((args.out / "raw").glob("*.jsonl"))
        if not files:
            print(f"error: no raw results in {args.out}/raw", file=sys.stderr)
            return 2
        return report(files, args.out, time.monotonic())
    try:
        check_simulator()
        import tqdm  # noqa: F401
    except (RuntimeError, ImportError) as exc:
        print(f"error: {exc} (make bench installs what the benchmark needs)", file=sys.stderr)
        return 2
    procs = plan(args.quick)
    if args.traffic_only:
        procs = [p for p in procs if p.get("bench") == "traffic"]
    args.out.mkdir(parents=True, exist_ok=True)
    raw_dir = args.out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("*traffic*.jsonl" if args.traffic_only else "*.jsonl"):
        old.unlink()
    digest = sources_digest()
    shards = [shard(p, digest) for p in procs]

    def write_raw(sh: Shard, got: dict) -> Path:  # (as each arrives: see --report-only)
        path = raw_dir / f"{sh.label}.jsonl"
        path.write_text(got["jsonl"])
        return path

    t0 = time.monotonic()
    try:
        res = run_campaign(shards, functools.partial(
                               run_shard, client=(socket.gethostname(), str(ROOT))),
                           Store(args.out / "shards"),
                           scheduler=args.scheduler, jobs=args.jobs, desc="bench", unit="row",
                           on_result=write_raw)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = [write_raw(sh, got) for sh, got in zip(shards, res.results, strict=True)]
    if args.traffic_only:  # (the other results of <out>, if any, stay as they are)
        return report_traffic(files, args.out, t0)
    return report(files, args.out, t0)


def report_traffic(files: list[Path], out: Path, t0: float) -> int:
    traffic = traffic_from(files)
    (out / "traffic.json").write_text(json.dumps(traffic, indent=1) + "\n")
    (out / "traffic.md").write_text(traffic_markdown(traffic))
    print(f"\n{len(traffic)} traffic rows in {time.monotonic() - t0:.0f} s; wrote "
          f"{out}/traffic.json, traffic.md")
    print_traffic(traffic)
    return 0


def print_traffic(traffic: list[dict]) -> None:
    print("Traffic on random memory, cycles per request (op size x descriptors @ in flight: "
          "GPA mean +- stdev, handle mean +- stdev, handle/GPA):")
    for r in traffic:
        if r["mode"] == "handle":
            g = next(x for x in traffic if x["mode"] == "gpa" and all(
                x[k] == r[k] for k in ("op", "request_bytes", "descs", "in_flight")))
            print(f"  {r['op']:5s} {r['request_bytes']:5d} x{r['descs']:2d} @{r['in_flight']}: "
                  f"{g['cycles_per_request']:8.1f} +-{g['stdev']:.1f}  "
                  f"{r['cycles_per_request']:8.1f} +-{r['stdev']:.1f}  "
                  f"{r['handle_gpa_ratio']:.4f}")


def report(files: list[Path], out: Path, t0: float) -> int:
    rows = rows_from(files)
    args_out = out
    (args_out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args_out / "results.md").write_text(markdown(rows))
    plot(rows, args_out / "overhead.png")
    iova = iova_from(files)
    (args_out / "iova.json").write_text(json.dumps(iova, indent=1) + "\n")
    (args_out / "iova.md").write_text(iova_markdown(rows, iova))
    iova_plot(iova["iotlb_size"], args_out / "iotlb.png")
    traffic = traffic_from(files)
    (args_out / "traffic.json").write_text(json.dumps(traffic, indent=1) + "\n")
    (args_out / "traffic.md").write_text(traffic_markdown(traffic))
    feat = features_from(files)
    (args_out / "features.json").write_text(json.dumps(feat, indent=1) + "\n")
    (args_out / "features.md").write_text(features_markdown(feat))
    default = [r for r in rows if r["data_width"] == DEFAULT["data_width"]
               and r["mem_latency"] == DEFAULT["mem_latency"] and r["mode"] == "handle"
               and r["workload"] == "seq-aligned-read"]
    print(f"\n{len(rows)} rows in {time.monotonic() - t0:.0f} s; wrote {args_out}/results.json, "
          f"results.md, overhead.png, iova.json, iova.md, iotlb.png, traffic.json, traffic.md, "
          f"features.json, features.md")
    print("\ndata width 64, memory latency 4, sequential aligned reads (handle mode):")
    print("  in flight  request   cycles/req  bytes/cycle  x bound  handle/GPA  "
          "handle/GPA-only device")
    for r in default:
        base = r["handle_baseline_ratio"]
        print(f"  {r['in_flight']:9d}  {r['request_bytes']:7d}  {r['cycles_per_request']:11.1f}"
              f"  {r['bytes_per_cycle']:11.2f}  {r['above_bound']:7.3f}  "
              f"{r['handle_gpa_ratio']:10.4f}  {'' if base is None else format(base, '.4f')}")
    print("\nIOVA, warm IOTLB (IOVA/GPA):",
          ", ".join(f"{r['request_bytes']}x{r['in_flight']} {r['handle_gpa_ratio']:.4f}"
                    for r in rows if r["mode"] == "iova" and r["data_width"] == 64
                    and r["mem_latency"] == 4 and r["workload"] == "seq-aligned-read"))
    print("IOVA misses, own cycles per miss (request, hypervisor latency):",
          ", ".join(f"{r['request_bytes']}@{r['hv_latency']}: {r['own_cycles_per_miss']:.2f}"
                    for r in iova["miss"]))
    print_traffic(traffic)
    print_features(feat)
    print("IOTLB entries -> hit rate, cycles/request:",
          ", ".join(f"{r['iotlb_entries']}: {r['hit_rate']:.3f}, {r['cycles_per_request']:.0f}"
                    for r in iova["iotlb_size"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
