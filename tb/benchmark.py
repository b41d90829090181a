"""``make bench``: what translating handles costs, measured on the RTL, side by side with GPA
mode in one run.

    python -m tb.benchmark [--quick] [--jobs 2] [--out build/bench]

Runs every workload row in both modes under the deterministic memory (``tb/detmem.py``), one
simulator process per (mode, memory latency, data width), checks every completion's cycle
against ``models.timing``, and writes ``results.json``, ``results.md`` and ``overhead.png``.
Cycle counts are exact: each process also runs one row twice and asserts the same count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .runner import DeviceConfig, check_simulator, run

SIZES = (512, 4096, 16384, 65536)
LATENCIES = (0, 4, 32)
WIDTHS = (32, 64, 128)
DEFAULT = {"data_width": 64, "mem_latency": 4}


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
    return procs


def run_proc(proc: dict, out_dir: Path) -> Path:
    mode = "handle" if proc["handle_mode"] else "gpa"
    out = (out_dir / "raw" / f"w{proc['data_width']}_l{proc['latency']}_{mode}.jsonl").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    params = {k: proc[k] for k in ("handle_mode", "latency", "rows", "repeat")}
    tests, failed, xml = run("tb.bench_sweep", DeviceConfig(data_width=proc["data_width"]),
                             testcase="test_sweep",
                             params={**params, "out": str(out)},
                             extra_env={"COCOTB_LOG_LEVEL": "WARNING"},
                             results_name=f"bench_l{proc['latency']}_{mode}")
    if tests != 1 or failed:
        raise RuntimeError(f"benchmark process {out.name} failed; see {xml}")
    return out


def rows_from(raw_files: list[Path]) -> list[dict]:
    rows = []
    seen = set()
    for path in raw_files:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "repeat_check" in r:
                continue
            ident = tuple(r[k] for k in ("mode", "size", "pattern", "align", "in_flight",
                                         "mem_latency", "data_width"))
            if ident in seen:  # the same row measured twice (exact counts: keep one)
                continue
            seen.add(ident)
            n = r["requests"]
            cpr = r["cycles"] / n
            rows.append({
                "workload": f"{r['pattern']}-{r['align']}-read",
                "mode": r["mode"],
                "request_bytes": r["size"],
                "in_flight": r["in_flight"],
                "mem_latency": r["mem_latency"],
                "data_width": r["data_width"],
                "cycles_per_request": round(cpr, 3),
                "bytes_per_cycle": round(r["size"] / cpr, 4),
                "bus_utilisation": round(r["data_beats"] / r["cycles"], 4),
                "translations_per_request": round(r["translations"] / n, 3),
                "bound_cycles_per_request": round(r["bound"] / n, 3),
                "above_bound": round(cpr / (r["bound"] / n), 4),
            })
    key = ("workload", "request_bytes", "in_flight", "mem_latency", "data_width")
    gpa = {tuple(r[k] for k in key): r for r in rows if r["mode"] == "gpa"}
    for r in rows:
        g = gpa.get(tuple(r[k] for k in key))
        r["handle_gpa_ratio"] = round(r["cycles_per_request"] / g["cycles_per_request"], 4) \
            if g else None
    rows.sort(key=lambda r: (r["data_width"], r["mem_latency"], r["workload"], r["in_flight"],
                             r["request_bytes"], r["mode"]))
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| data width | latency | workload | in flight | request | mode | cycles/req | "
            "bytes/cycle | bus util. | xlate/req | bound | x bound | handle/GPA |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['data_width']} | {r['mem_latency']} | {r['workload']} | {r['in_flight']} "
             f"| {r['request_bytes']} | {r['mode']} | {r['cycles_per_request']:.1f} | "
             f"{r['bytes_per_cycle']:.2f} | {r['bus_utilisation']:.3f} | "
             f"{r['translations_per_request']:.1f} | {r['bound_cycles_per_request']:.1f} | "
             f"{r['above_bound']:.3f} | "
             f"{'' if r['handle_gpa_ratio'] is None else format(r['handle_gpa_ratio'], '.4f')} |"
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="data width 64, latency 4, sequential aligned rows only")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild results.json/md and overhead.png from the rows already in "
                         "<out>/raw (for instance after an interrupted sweep)")
    args = ap.parse_args(argv)
    if args.report_only:
        files = sorted((args.out / "raw").glob("*.jsonl"))
        if not files:
            print(f"error: no raw results in {args.out}/raw", file=sys.stderr)
            return 2
        return report(files, args.out, time.monotonic())
    try:
        check_simulator()
        from tqdm import tqdm
    except (RuntimeError, ImportError) as exc:
        print(f"error: {exc} (make bench installs what the benchmark needs)", file=sys.stderr)
        return 2
    procs = plan(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    total = sum(len(p["rows"]) for p in procs)
    raw_dir = args.out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("*.jsonl"):
        old.unlink()
    stop = threading.Event()
    bar = tqdm(total=total, unit="row", desc="bench")

    def watch():
        while not stop.wait(2):
            done = sum(1 for p in raw_dir.glob("*.jsonl") for line in p.read_text().splitlines()
                       if '"repeat_check"' not in line)
            bar.update(done - bar.n)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            files = list(pool.map(lambda p: run_proc(p, args.out), procs))
    except RuntimeError as exc:
        stop.set()
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop.set()
    watcher.join()
    bar.update(total - bar.n)
    bar.close()
    return report(files, args.out, t0)


def report(files: list[Path], out: Path, t0: float) -> int:
    rows = rows_from(files)
    args_out = out
    (args_out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args_out / "results.md").write_text(markdown(rows))
    plot(rows, args_out / "overhead.png")
    default = [r for r in rows if r["data_width"] == DEFAULT["data_width"]
               and r["mem_latency"] == DEFAULT["mem_latency"] and r["mode"] == "handle"
               and r["workload"] == "seq-aligned-read"]
    print(f"\n{len(rows)} rows in {time.monotonic() - t0:.0f} s; wrote {args_out}/results.json, "
          f"results.md, overhead.png")
    print("\ndata width 64, memory latency 4, sequential aligned reads (handle mode):")
    print("  in flight  request   cycles/req  bytes/cycle  x bound  handle/GPA")
    for r in default:
        print(f"  {r['in_flight']:9d}  {r['request_bytes']:7d}  {r['cycles_per_request']:11.1f}"
              f"  {r['bytes_per_cycle']:11.2f}  {r['above_bound']:7.3f}  "
              f"{r['handle_gpa_ratio']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
