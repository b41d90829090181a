"""Mutation testing of the RTL (issue 18): ``make mutants``.

Each entry of :data:`MUTANTS` is one small, deliberate bug: a snippet of an ``rtl/`` file that
must occur there exactly once, its replacement, what the change breaks, and the *suite* (a few
pytest node ids, fastest first) that must notice it. For every mutant the tool:

1. copies the source tree (everything but ``.git``, ``.venv`` and ``build``) into
   ``build/mutants/work/<mutant>/``, so that the tree itself is never edited (a crash leaves it
   clean) and every run has its own ``build/sim`` (``tb.runner`` builds under the tree it is
   imported from);
2. applies the mutant there; a snippet that is not in its file exactly once stops the run with
   a message naming the mutant (a changed RTL never silently makes a mutant a no-op);
3. elaborates the designs that contain the mutated file (:data:`FILE_DESIGNS`) to RTLIL and
   compares them, without the ``src`` attributes, with the original's: a mutant that leaves
   every design the same is reported ``unchanged`` (neither killed nor a survivor);
4. runs its suite with ``pytest -x`` (stopping at the first failure) under a timeout: a failing
   test kills the mutant (the report names it); a timeout kills it too, reported as
   ``timeout``; a suite that passes leaves a survivor, unless the entry says why the mutant is
   equivalent (``equivalent``).

Before the mutants, every suite runs once on the unmutated copy (the baseline): a suite that
fails there would kill every mutant for nothing, so the run stops.

Mutants run in parallel shards (``--jobs``) through :func:`run_shards`, a plain process pool
(one function, so that the campaign runner of ``verif/campaign.py`` can take it over). Results
go to ``build/mutants/report.json`` (a list of objects: ``mutant``, ``file``, ``killed``,
``test``, ``status``, ``what``, ``suite``, ``seconds``, ``detail``) and ``report.md``.

    .venv/bin/python -m verif.mutants [--jobs 2] [--only NAME ...] [--list] [--check]

The exit status is 0 only if every mutant is killed or declared equivalent (docs/mutants.md).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "mutants"

#: Files and directories never copied into a mutant's tree.
_IGNORE = (".git", ".venv", "build", "sim_build", "__pycache__", ".pytest_cache", ".hypothesis",
           "*.egg-info", "results.xml", ".ruff_cache")


class MutantError(RuntimeError):
    """A mutant cannot be applied (its snippet is not in its file exactly once)."""


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: ``old`` (exactly once in ``file``) becomes ``new``."""

    name: str
    file: str
    old: str
    new: str
    what: str
    suite: str  # a key of SUITES
    equivalent: str = ""  # why no test can tell it from the original ("": it must be killed)


#: The fast suites: pytest node ids, run in this order with -x; a timeout in seconds.
SUITES: dict[str, tuple[tuple[str, ...], int]] = {
    "translate": (("tests/test_rtl_translate.py",), 300),
    "iotlb": (("tests/test_rtl_iotlb.py",
               "tests/test_mutants_kill.py::test_iotlb_stale_when_a_command_starts_near_a_lookup",
               "tests/test_sim.py::test_iova_identity",
               "tests/test_sim.py::test_iova_driver[w64]"), 600),
    "iova": (("tests/test_sim.py::test_iova_identity",
              "tests/test_sim.py::test_iova_driver[w64]",
              "tests/test_adversarial_sim.py::test_adversarial[stream-w64-iova]",
              "tests/test_adversarial_sim.py::test_adversarial[iova-race-w64]"), 900),
    "hvregs": (("tests/test_rtl_registers.py::test_hv_follows_the_map",
                "tests/test_rtl_registers.py::test_hv_lockstep"), 300),
    "dma": (("tests/test_sim.py::test_basic[handle-64]", "tests/test_sim.py::test_fault",
             "tests/test_sim.py::test_random[w64-handle-latency]",
             "tests/test_sim.py::test_random[w64-handle]"), 600),
    "engine": (("tests/test_rtl_address.py", "tests/test_sim.py::test_fault",
                "tests/test_sim.py::test_basic[handle-64]",
                "tests/test_sim.py::test_random[w64-handle-queue8]",
                "tests/test_adversarial_sim.py::test_adversarial[stream-w64-handle-straddle]",
                "tests/test_adversarial_sim.py::test_adversarial[stream-w64-handle]"), 900),
    "revoke": (("tests/test_adversarial_sim.py::test_adversarial[revoke-w64]",
                # (a resolved IOTLB miss makes the answer stale too: a re-lookup per miss)
                "tests/test_sim.py::test_iova_identity",
                "tests/test_sim.py::test_iova_driver[w64]"), 600),
    "features": (("tests/test_features_sim.py::test_features",
                  "tests/test_adversarial_sim.py::test_adversarial[stream-w64-handle]"), 900),
    "reset": (("tests/test_adversarial_sim.py::test_reset_window",
               "tests/test_adversarial_sim.py::test_adversarial[reset-w64]"), 600),
}

#: Designs elaborated to tell whether a mutant changes the hardware (RTLIL without ``src``).
DESIGNS: dict[str, Callable[[], object]] = {}


def _design(name: str):
    def register(fn):
        DESIGNS[name] = fn
        return fn
    return register


@_design("top")
def _top():
    from rtl.top import VirtioBlkHandle
    return VirtioBlkHandle()


@_design("xlate12")
def _xlate12():  # no IOTLB, a table that is not a power of two (the bound compare exists)
    from rtl.translate import TranslationUnit
    return TranslationUnit(12)


@_design("xlate16")
def _xlate16():
    from rtl.translate import TranslationUnit
    return TranslationUnit(16)


@_design("hv3")
def _hv3():  # no IOTLB registers
    from rtl.hvregs import PrivilegedRegs
    return PrivilegedRegs(entries=3)


FILE_DESIGNS = {
    "rtl/translate.py": ("top", "xlate12", "xlate16"),
    "rtl/hvregs.py": ("top", "hv3"),
}
DEFAULT_DESIGNS = ("top",)


def M(name, file, old, new, what, suite, equivalent=""):
    return Mutant(name, file, old, new, what, suite, equivalent)


X, D, E, L, H = "rtl/translate.py", "rtl/dma.py", "rtl/engine.py", "rtl/iotlb.py", "rtl/hvregs.py"

MUTANTS: list[Mutant] = [
    # ---- Translation unit, grant checks (docs/architecture.md, "Handles and translation") ----
    M("xlate_handle_bit_dropped", X, "(not_handle2, spec.FAULT_NOT_HANDLE),",
      "(not_handle2 & 0, spec.FAULT_NOT_HANDLE),",
      "bit 63 is not checked (cause 1 never raised)", "translate"),
    M("xlate_bound_dropped", X, "out_of_range2.eq(oor)", "out_of_range2.eq(0)",
      "the table bound is not checked (cause 2 never raised)", "translate"),
    M("xlate_bound_off_by_one", X, "oor = oor | (ref1 >= self._entries)",
      "oor = oor | (ref1 > self._entries)",
      "the table bound off by one: reference == entries passes", "translate"),
    M("xlate_high_bits_ignored", X, "oor = lk.high\n", "oor = lk.high & 0\n",
      "reference bits above the table index are ignored (the reference wraps)", "translate"),
    M("xlate_permit_dropped", X,
      "(entry.flags.type != spec.GTF_permit_access, spec.FAULT_NOT_PERMITTED),",
      "(not_handle2 & 0, spec.FAULT_NOT_PERMITTED),",
      "the entry's type (valid) is not checked", "translate"),
    M("xlate_permit_inverted", X,
      "(entry.flags.type != spec.GTF_permit_access, spec.FAULT_NOT_PERMITTED),",
      "(entry.flags.type == spec.GTF_permit_access, spec.FAULT_NOT_PERMITTED),",
      "the entry's type check inverted", "translate"),
    M("xlate_domain_dropped", X, "(entry.domid != tb.domid, spec.FAULT_WRONG_DOMAIN),",
      "(not_handle2 & 0, spec.FAULT_WRONG_DOMAIN),",
      "the domain compare dropped", "translate"),
    M("xlate_domain_inverted", X, "(entry.domid != tb.domid, spec.FAULT_WRONG_DOMAIN),",
      "(entry.domid == tb.domid, spec.FAULT_WRONG_DOMAIN),",
      "the domain compare inverted", "translate"),
    M("xlate_readonly_dropped", X, "(write2 & entry.flags.readonly, spec.FAULT_READONLY),",
      "(not_handle2 & 0, spec.FAULT_READONLY),",
      "the read-only bit is not checked for device writes", "translate"),
    M("xlate_readonly_on_reads", X, "(write2 & entry.flags.readonly, spec.FAULT_READONLY),",
      "(~write2 & entry.flags.readonly, spec.FAULT_READONLY),",
      "the read-only check applied to reads instead of writes", "translate"),
    M("xlate_ok_skips_readonly", X, "[f for f, _ in checks]", "[f for f, _ in checks[:-1]]",
      "the answer's ok ignores the read-only check (its cause is still reported)", "translate"),
    M("xlate_gpa_checks", X, "checking = tb.handle_mode ", "checking = tb.handle_mode | 1 ",
      "GPA mode checks grant entries as handle mode does", "translate"),
    M("xlate_frame_shifted", X, "lk.frame.eq(entry.frame), lk.mode.eq(tb.handle_mode),",
      "lk.frame.eq(entry.frame[1:]), lk.mode.eq(tb.handle_mode),",
      "the frame field decoded one bit off", "translate"),
    M("xlate_stale_read_cycle", X, "m.d.comb += tbl_stale1.eq(wr_any1 & (wr_addr1 == ref1))",
      "m.d.comb += tbl_stale1.eq(0)",
      "a table write in the lookup's read cycle does not make the answer stale", "translate"),
    M("xlate_stale_held_answer", X,
      "with m.Elif(tb.cfg_changed | (lk.mode & self._written(resp_ref))):",
      "with m.Elif(tb.cfg_changed):",
      "a write to the held answer's entry does not make it stale (grant-only unit)",
      "translate"),
    M("xlate_stale_cfg", X,
      "(GPA mode reads no entry)\n                lk.stale.eq(tb.cfg_changed\n",
      "(GPA mode reads no entry)\n                lk.stale.eq(0\n",
      "an HV_CTRL/HV_DOMID write with a lookup does not make it stale",
      "translate"),
    # ---- Translation unit, IOVA mode (docs/iotlb.md) ------------------------------------
    M("iova_perm_fault_dropped", X,
      "m.d.comb += fault.eq(iotlb.fault | Mux(iova, 0, grant_fault))",
      "m.d.comb += fault.eq(Mux(iova, 0, grant_fault))",
      "an IOTLB permission fault is reported as cause 0", "iova"),
    M("iova_ok_ignores_perm", X, "lk.ok.eq(iotlb.ok | (~iova & grant_ok)),",
      "lk.ok.eq(iotlb.hit | (~iova & grant_ok)),",
      "an IOTLB hit without the permission lets the burst go", "iova"),
    M("iova_stale_held_answer", X,
      "| (io_answer & iotlb.active)):", "):",
      "an IOTLB command does not make the held IOVA answer stale", "iova"),
    M("iova_resolve_fail_cause", X, "lk.fault.eq(spec.FAULT_IOTLB_FAILED), lk.ok.eq(0)",
      "lk.fault.eq(spec.FAULT_IOTLB_NO_READ), lk.ok.eq(0)",
      "a failed miss reports cause 11 instead of 10", "iova"),
    M("iova_miss_page_next", X, "vaddr3.eq(Cat(off2, iotlb.key_q))",
      "vaddr3.eq(Cat(off2, iotlb.key_q + 1))",
      "MISS_IOVA names the page after the one the stalled access needs", "iova"),
    M("xlate_revoke_iova_top", X,
      "with m.Elif(tb.cfg_changed | (lk.mode & ~io_answer & self._written(resp_ref))",
      "with m.Elif(tb.cfg_changed",
      "a grant entry written after its lookup answered is used (revocation, device with "
      "IOTLB)", "revoke"),
    # ---- IOTLB -------------------------------------------------------------------------
    M("iotlb_compare_bit0", L, "m.d.comb += match.eq(vbits[w] & (kall2 | (diff == 0))",
      "m.d.comb += match.eq(vbits[w] & (kall2 | (diff[1:] == 0))",
      "the compare ignores page-number bit 0", "iotlb"),
    M("iotlb_valid_ignored", L, "m.d.comb += match.eq(vbits[w] & (kall2 | (diff == 0))",
      "m.d.comb += match.eq((kall2 | (diff == 0))",
      "the valid bit is not part of the compare", "iotlb"),
    M("iotlb_write_checks_r", L, "Mux(entry.w, 0, spec.FAULT_READONLY)",
      "Mux(entry.r, 0, spec.FAULT_READONLY)",
      "a write is checked against the read permission", "iotlb"),
    M("iotlb_read_unchecked", L, "Mux(entry.r, 0, spec.FAULT_IOTLB_NO_READ)", "0",
      "the read permission is not checked", "iotlb"),
    M("iotlb_large_offset", L, "m.d.comb += ppn.eq(entry.ppn | (key2 & Cat(entry.mask,",
      "m.d.comb += ppn.eq(entry.ppn | (key2 & Cat(entry.mask[1:],",
      "a large mapping's page offset is one bit short", "iotlb"),
    M("iotlb_stale_dropped", L, "m.d.comb += self.stale.eq(act2 | self.active)",
      "m.d.comb += self.stale.eq(act2)",
      "a lookup in the cycle a command starts is not stale", "iotlb"),
    # ---- DMA engine: page split, burst length, masks, rotator, stale answers, faults ------
    M("dma_next_page_plus2", D, "m.d.comb += nxt_hi_inc.eq(nxt_hi + 1)",
      "m.d.comb += nxt_hi_inc.eq(nxt_hi + 2)",
      "the page split moves to page + 2 (the next reference is ref + 2)", "dma"),
    M("dma_window_end_off_by_one", D, "m.d.comb += end.eq(rem + nxt_lo[:lb])",
      "m.d.comb += end.eq(rem + nxt_lo[:lb] + 1)",
      "the burst geometry counts one byte too many", "dma"),
    M("dma_page_cross_early", D, "cross = reaches & nxt_lo[lb:12].all()",
      "cross = reaches & nxt_lo[lb + 1:12].all()",
      "a burst ending mid-page is taken as the page's end (page split off by a window)",
      "dma"),
    M("dma_arlen_plus1", D, "arlen.eq(beats_m1), w_cnt.eq(beats_m1)",
      "arlen.eq(beats_m1 + 1), w_cnt.eq(beats_m1)", "the burst length (AxLEN) one too long",
      "dma"),
    M("dma_beats_minus1", D, "(rem[:lb + 1] + first_m1.as_signed()) >> lw",
      "(rem[:lb + 1] + first_m1.as_signed() - 1) >> lw",
      "the last burst's beat count rounds one byte short", "dma"),
    M("dma_wlast_early", D, "w_one.eq(w_cnt == 1)", "w_one.eq(w_cnt == 2)",
      "WLAST one beat early", "dma"),
    M("dma_first_mask", D, "m.d.comb += [fm[lane].eq(lane >= lo[:lw]),",
      "m.d.comb += [fm[lane].eq(lane > lo[:lw]),",
      "the first beat loses its first byte lane", "dma"),
    M("dma_last_mask", D, "lm[lane].eq((end_lane == 0) | (lane < end_lane))",
      "lm[lane].eq((end_lane == 0) | (lane <= end_lane))",
      "the last beat carries one byte lane too many", "dma"),
    M("dma_rotator_lane0", D, "m.d.comb += rotated.eq(Cat(*lanes))",
      "m.d.comb += rotated.eq(Cat(lanes[1], *lanes[1:]))",
      "byte lane 0 of the rotator takes lane 1's byte", "dma"),
    M("dma_fault_ignored", D,
      "with m.Elif(~lk.ok):\n                    finish(lk.fault, FA_BURST)",
      "with m.Elif(False):\n                    finish(lk.fault, FA_BURST)",
      "a failed check does not end the command: the burst goes out", "dma"),
    M("dma_stale_used", D, "with m.Elif(lk.stale):\n                    m.d.sync += int_ref",
      "with m.Elif(False):\n                    m.d.sync += int_ref",
      "a stale answer is used instead of being looked up again (revocation)", "revoke"),
    M("dma_relookup_next_page", D,
      "m.d.sync += int_ref.eq(key(cur_hi))\n                    m.next = \"XLATE\"",
      "m.d.sync += int_ref.eq(key(nxt_hi))\n                    m.next = \"XLATE\"",
      "the re-lookup after a stale answer reads the next page's entry", "revoke"),
    M("dma_abort_ignored", D, "with m.If(b_final | self.abort):", "with m.If(b_final):",
      "a device reset does not end the command at the burst boundary", "reset",
      "ADDR, where the command goes next, ends it on the reset too (`self.abort | empty`), "
      "one cycle later, before any address goes out: no burst starts either way; only the "
      "reset completes a cycle later, a cycle the contract does not fix (a reset completes "
      "once no transaction is in flight)"),
    # ---- Ring engine: the early address (issue 16's Fmax) ----------------------------------
    M("engine_early_va_ignored", E, "Mux(early_va, va_d[:EARLY_BITS],",
      "Mux(0, va_d[:EARLY_BITS],",
      "after DESC_FIRST, DESC_WAIT, DESC_CHECK, SEG_* and ZERO_* the early address is not the "
      "address register's: a descriptor read, the header's first piece or the status byte is "
      "looked up at another address", "engine"),
    M("engine_early_head_sum", E, "XS_AVAIL: [(None, ring_off)],", "XS_AVAIL: [],",
      "the head's early address is the avail ring's base, not its entry's", "engine"),
    M("engine_early_high_carry", E, "Mux(carry, inc, high_q)", "high_q",
      "the early address's bits above the offsets' width never take the carry", "engine"),
    # ---- Ring engine: queue, chain and ring checks, the reset gate -------------------------
    M("engine_queue_size_pow2", E, "m.d.sync += [num_ok.eq(single & (n[qbits:] == 0)),",
      "m.d.sync += [num_ok.eq((n[qbits:] == 0)),",
      "a queue size that is not a power of two is accepted", "engine"),
    M("engine_queue_size_dropped", E, "queue_ok = (e.num_ok & (e.q.desc[:4] == 0)",
      "queue_ok = ((e.q.desc[:4] == 0)", "the queue size is not checked", "engine"),
    M("engine_avail_align", E, "& ~e.q.avail[0]\n", "\n",
      "the avail ring's alignment is not checked", "engine"),
    M("engine_chain_loop", E, "chain_full.eq(walked + 1 == e.qnum)", "chain_full.eq(0)",
      "a chain longer than the queue (a loop) is never stopped", "engine"),
    M("engine_chain_len_off_by_one", E, "chain_full.eq(walked + 1 == e.qnum)",
      "chain_full.eq(walked == e.qnum)",
      "a chain of queue size + 1 descriptors passes (loop found one late)", "engine"),
    M("engine_next_bound", E,
      "next_bad.eq(e.at_least(e.desc_f.next, Mux(e.in_tbl, e.tbl_n, e.qnum)))",
      "next_bad.eq(0)", "a next index outside the queue is followed", "engine"),
    M("engine_head_bound", E, "head_bad.eq(e.at_least(e.cap_head, e.qnum))",
      "head_bad.eq(0)", "a head index outside the queue is walked", "engine"),
    M("engine_index_bound_off_by_one", E, "(index[:self.qbits] >= bound)",
      "(index[:self.qbits] > bound)", "an index equal to the queue size passes", "engine"),
    M("engine_avail_jump", E, "| (pending[:e.qbits] > e.qnum)),", "),",
      "avail.idx ahead by more than the queue size is accepted", "engine"),
    M("engine_readable_after_writable", E, "| (~d_write & seen_write) |", "|",
      "a readable descriptor after a writable one is accepted", "engine"),
    M("engine_indirect", E, "bad.eq(Mux(is_ind, ind_bad | wraps,", "bad.eq(Mux(is_ind, 0,",
      "a malformed INDIRECT descriptor is followed", "features"),
    # issue 17's features (the "features" suite: tests/test_features_sim.py and the stream)
    M("engine_indirect_unnegotiated", E, "ind_bad.eq(~e.q.indirect | ", "ind_bad.eq(",
      "an INDIRECT descriptor is followed without INDIRECT_DESC negotiated", "features"),
    M("engine_indirect_nested", E, "| e.in_tbl | e.desc_f.flags.next", "| e.desc_f.flags.next",
      "an INDIRECT descriptor inside a table is followed", "features"),
    M("engine_indirect_len16", E, "| (d_len[:4] != 0) | (d_len[4:] == 0)",
      "| (d_len[4:] == 0)", "a table length that is not a multiple of 16 is accepted",
      "features"),
    M("engine_table_bound", E, "Mux(e.in_tbl, e.tbl_n, e.qnum)))", "e.qnum))",
      "a next index outside the indirect table but inside the queue is followed", "features"),
    M("engine_table_entry_offset", E, "((entry + TBL_DPOS // spec.DESC_BYTES) << (4 - lw))",
      "(entry << (4 - lw))", "a table entry is taken from the buffer one entry early",
      "features"),
    M("dma_table_to_disk", D, "d_en_lo.eq(Mux(r_take & to_disk & ~to_tbl, en_lo, 0)),",
      "d_en_lo.eq(Mux(r_take & to_disk, en_lo, 0)),",
      "an indirect table's read also writes the RAM disk", "features"),
    M("engine_limits_last_only", E, "e.over.eq(e.over | over_now)", "e.over.eq(over_now)",
      "only the chain's last descriptor is checked against SIZE_MAX", "features"),
    M("engine_dwz_unmap", E, "unsupp.eq((flags[1:] != 0) | (e.t_discard & flags[0]))",
      "unsupp.eq(flags[1:] != 0)", "a DISCARD with UNMAP zeroes its range", "features"),
    M("engine_dwz_range", E, "| (fits > e.cap_sectors)),", "),",
      "a DISCARD/WRITE_ZEROES range past the disk's end is zeroed", "features"),
    M("engine_event_need", E, "< (e.used_idx - e.signalled)[:16])",
      "<= (e.used_idx - e.signalled)[:16])",
      "EVENT_IDX: an interrupt when the used index has not passed used_event", "features"),
    M("engine_avail_event_skip", E,
      "aevt_need.eq(e.evt & (pending == 0) & (e.aevt_pub != e.last_avail))",
      "aevt_need.eq(0)", "EVENT_IDX: avail_event is never written", "features"),
    M("dma_zero_short", D, "e.z_last.eq(rem[lw + 1:] == 2)]",
      "e.z_last.eq(rem[lw + 1:] == 3)]",
      "a zero command stops two words short", "features"),
    M("engine_framing", E, "with m.Elif(r_lt16 | ~have_w):", "with m.Elif(~have_w):",
      "a request with fewer than 16 readable header bytes is accepted", "engine"),
    M("engine_reset_gate", E, "e.abort_done.eq(e.abort & ~e.dma.busy)",
      "e.abort_done.eq(e.abort)",
      "a device reset returns to IDLE while the DMA engine is still busy", "reset"),
    M("mmio_reset_gate", "rtl/mmio.py", "reset_done.eq(reset_pending & ~q.dev_reset & q.idle)",
      "reset_done.eq(reset_pending & ~q.dev_reset)",
      "a driver reset completes while a transaction is in flight", "reset"),
    # ---- Privileged registers: the hypervisor register decode ---------------------------
    M("hv_grant_word_swap", H, "tb.wen.eq(Mux(offset[2], bus.w_strb << 4, bus.w_strb))",
      "tb.wen.eq(Mux(offset[2], bus.w_strb, bus.w_strb << 4))",
      "GRANT[ref] words 0 and 1 swapped", "hvregs"),
    M("hv_grant_ref_shift", H, "ref.eq((offset - spec.HV_GRANT_BASE) >> 3)",
      "ref.eq((offset - spec.HV_GRANT_BASE) >> 2)",
      "GRANT[ref] decoded with a 4-byte stride", "hvregs"),
    M("hv_grant_bound", H, "& (offset < spec.HV_GRANT_BASE\n",
      "& (offset <= spec.HV_GRANT_BASE\n",
      "a write just past the last grant entry reaches the table", "hvregs"),
    M("hv_domid_decode", H, "with m.If(bus.w_en & at(\"HV_DOMID\")):",
      "with m.If(bus.w_en & at(\"HV_CTRL\")):", "HV_DOMID decoded at HV_CTRL's offset",
      "hvregs"),
    M("hv_register_alias", H, "m.d.comb += registers.eq(bus.addr[top:] == 0)",
      "m.d.comb += registers.eq(1)",
      "the registers alias through the whole port (upper address bits ignored)", "hvregs"),
    M("hv_cfg_changed_domid", H,
      "m.d.comb += tb.cfg_changed.eq(bus.w_en & (at(\"HV_CTRL\") | at(\"HV_DOMID\")))",
      "m.d.comb += tb.cfg_changed.eq(bus.w_en & at(\"HV_CTRL\"))",
      "an HV_DOMID write does not make answers stale", "hvregs"),
    M("hv_fault_latch_first", H,
      "m.d.comb += latch.eq(st.engine.fault & (~fault_status | clear))",
      "m.d.comb += latch.eq(st.engine.fault)",
      "a later fault overwrites the latched cause and address", "hvregs"),
]


# ---- Applying ----------------------------------------------------------------------------------

def by_name() -> dict[str, Mutant]:
    names = [mu.name for mu in MUTANTS]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise MutantError(f"duplicate mutant names: {sorted(dupes)}")
    return {mu.name: mu for mu in MUTANTS}


def mutated_text(mutant: Mutant, root: Path = ROOT) -> str:
    """The text of ``mutant.file`` under ``root`` with the mutant applied."""
    path = root / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise MutantError(f"mutant {mutant.name}: its snippet {mutant.old!r} occurs {count} "
                          f"times in {mutant.file} (it must occur exactly once): update "
                          f"verif/mutants.py")
    if mutant.suite not in SUITES:
        raise MutantError(f"mutant {mutant.name}: no suite {mutant.suite!r}")
    return text.replace(mutant.old, mutant.new)


def apply(mutant: Mutant, tree: Path) -> None:
    """Apply ``mutant`` to the copy of the sources in ``tree`` (never to the repository)."""
    if tree.resolve() == ROOT:
        raise MutantError(f"mutant {mutant.name}: refusing to edit the repository itself")
    text = mutated_text(mutant, tree)
    (tree / mutant.file).write_text(text)


def check_all(root: Path = ROOT) -> list[str]:
    """The problems of the mutant list against the sources under ``root`` (empty: each mutant
    applies exactly once and names a suite)."""
    problems = []
    try:
        by_name()
    except MutantError as exc:
        problems.append(str(exc))
    for mu in MUTANTS:
        try:
            mutated_text(mu, root)
        except MutantError as exc:
            problems.append(str(exc))
    return problems


def copy_tree(dst: Path, src: Path = ROOT) -> Path:
    """A private copy of the sources (no ``.git``, ``.venv``, ``build``)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*_IGNORE), symlinks=True)
    return dst


# ---- Design digests ----------------------------------------------------------------------------

def rtlil_digest(component) -> str:
    """SHA-256 of the component's RTLIL without its ``src`` attributes."""
    from amaranth.back import rtlil

    text = rtlil.convert(component, name="top")
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("attribute \\src")]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def designs_of(mutant: Mutant) -> tuple[str, ...]:
    return FILE_DESIGNS.get(mutant.file, DEFAULT_DESIGNS)


def _env(tree: Path) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(tree), "VHB_SKIP_LINUX": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def tree_digests(tree: Path, names: Iterable[str], timeout: float = 600) -> dict[str, str]:
    """The digests of designs ``names`` as the sources in ``tree`` build them (a subprocess in
    ``tree``, so that its ``rtl`` is the one imported)."""
    res = subprocess.run([sys.executable, "-m", "verif.mutants", "--digest", *names], cwd=tree,
                         env=_env(tree), capture_output=True, text=True, timeout=timeout,
                         check=False)
    if res.returncode:
        raise RuntimeError(f"elaboration failed in {tree}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- Running one mutant ------------------------------------------------------------------------

# a line of pytest's short summary (-rfE): "FAILED tests/x.py::test_y[id] - message"
_FAILED = re.compile(r"^(?:FAILED|ERROR) (tests/.+?)(?: - .*)?$", re.MULTILINE)


def run_suite(tree: Path, tests: Iterable[str], timeout: float,
              log: Path) -> tuple[str, str | None]:
    """Run ``tests`` with ``pytest -x`` in ``tree``. Returns ``(outcome, test)``: ``passed``,
    ``failed`` (and the first failing node id), ``timeout`` or ``error`` (pytest could not run
    the suite: no test collected, internal error)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
           *tests]
    with open(log, "w") as out:
        out.write(f"$ (cd {tree} && {' '.join(cmd[1:])})\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=tree, env=_env(tree), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest process and its simulators
            proc.wait()
            return "timeout", None
        except BaseException:  # interrupted: no simulator outlives the run
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    text = log.read_text()
    if code == 0:
        return "passed", None
    found = _FAILED.search(text.rpartition("short test summary info")[2])
    if code == 1 and found:
        return "failed", found.group(1)
    return "error", None


def run_mutant(mutant: Mutant | None, work: Path, baseline: dict[str, str] | None,
               timeout: float | None = None, suite: str | None = None,
               keep: bool = False) -> dict:
    """Copy the tree, apply ``mutant`` (None: the baseline run of ``suite``), compare its
    designs with ``baseline`` (digests), run its suite. Returns the report entry."""
    name = mutant.name if mutant else f"baseline-{suite}"
    suite = mutant.suite if mutant else suite
    tests, suite_timeout = SUITES[suite]
    rec = {"mutant": name, "file": mutant.file if mutant else None, "killed": False,
           "test": None, "status": None, "what": mutant.what if mutant else "",
           "suite": suite, "seconds": 0.0, "detail": ""}
    t0 = time.monotonic()
    tree = work / name
    log = work / f"{name}.log"
    try:
        copy_tree(tree)
        if mutant is not None:
            try:
                apply(mutant, tree)
            except MutantError as exc:
                rec.update(status="error", detail=str(exc))
                return rec
            if baseline is not None:
                names = designs_of(mutant)
                try:
                    digests = tree_digests(tree, names)
                except RuntimeError as exc:
                    rec.update(status="error", detail=f"does not elaborate: {exc}")
                    return rec
                if all(digests[n] == baseline[n] for n in names):
                    rec.update(status="unchanged",
                               detail=f"RTLIL of {', '.join(names)} identical to the original")
                    return rec
        outcome, test = run_suite(tree, tests, timeout or suite_timeout, log)
        if outcome == "failed":
            rec.update(killed=True, test=test, status="killed")
        elif outcome == "timeout":
            rec.update(killed=True, test=f"timeout after {timeout or suite_timeout:.0f} s",
                       status="timeout")
        elif outcome == "passed":
            if mutant is None:
                rec.update(status="passed")
            elif mutant.equivalent:
                rec.update(status="equivalent", detail=mutant.equivalent)
            else:
                rec.update(status="survived")
        else:
            rec.update(status="error", detail=f"pytest did not run the suite (see {log})")
        return rec
    finally:
        rec["seconds"] = round(time.monotonic() - t0, 1)
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)


# ---- Shards ------------------------------------------------------------------------------------

def run_shards(fn: Callable, items: list, jobs: int) -> Iterator:
    """``fn(item)`` for every item on ``jobs`` worker processes, results as they complete.
    The one place that knows how work is spread (a plain process pool today; a Dask cluster
    through ``verif/campaign.py`` once that is in the tree)."""
    if jobs <= 1:
        for item in items:
            yield fn(item)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, item) for item in items]
        for fut in as_completed(futures):
            yield fut.result()


def _task(item, work, baseline, timeout, keep):
    kind, value = item
    if kind == "suite":
        return run_mutant(None, work, None, timeout, suite=value, keep=keep)
    return run_mutant(by_name()[value], work, baseline, timeout, keep=keep)


# ---- Report ------------------------------------------------------------------------------------

RESULT = {"killed": "killed", "timeout": "killed (timeout)", "survived": "**SURVIVED**",
          "equivalent": "equivalent", "unchanged": "design unchanged", "error": "**ERROR**"}


def summarize(records: list[dict]) -> dict:
    count = {k: sum(r["status"] == k for r in records) for k in RESULT}
    return {"mutants": len(records), **count,
            "killed_total": count["killed"] + count["timeout"]}


def write_report(records: list[dict], out: Path, *, command: str, wall: float,
                 jobs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    order = {mu.name: i for i, mu in enumerate(MUTANTS)}
    records = sorted(records, key=lambda r: order.get(r["mutant"], -1))
    (out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    s = summarize(records)
    lines = [
        "# Mutants of the RTL", "",
        f"`{command}`: {s['mutants']} mutants, {s['killed_total']} killed "
        f"({s['timeout']} of them by the timeout), {s['survived']} survived, "
        f"{s['equivalent']} equivalent, {s['unchanged']} with an unchanged design, "
        f"{s['error']} errors; {wall / 60:.1f} minutes with {jobs} jobs.", "",
        "| mutant | file | what it breaks | result | test that killed it | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        test = f"`{r['test']}`" if r["test"] and r["status"] == "killed" else (r["test"] or "")
        result = RESULT.get(r["status"], r["status"])
        if r["detail"] and r["status"] in ("equivalent", "unchanged", "error"):
            result += f": {r['detail']}"
        lines.append(f"| `{r['mutant']}` | `{r['file']}` | {r['what']} | {result} | {test} "
                     f"| {r['seconds']:.0f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


# ---- Command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mutation testing of the RTL (docs/mutants.md)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run in parallel")
    ap.add_argument("--only", nargs="*", default=None, help="these mutants only")
    ap.add_argument("--file", default=None, help="the mutants of this file only (rtl/dma.py)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per mutant's suite (default: the suite's own)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated runs of the suites and the design comparison")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep each mutant's tree")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="check that every mutant applies exactly once, and exit")
    ap.add_argument("--digest", nargs="*", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.digest is not None:  # (in a mutant's tree: tree_digests)
        print(json.dumps({n: rtlil_digest(DESIGNS[n]()) for n in args.digest}))
        return 0
    problems = check_all()
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    if args.check or args.list:
        for mu in MUTANTS:
            if args.list:
                print(f"{mu.name:32} {mu.file:18} {mu.suite:10} {mu.what}")
        if args.check:
            print(f"{len(MUTANTS)} mutants, each applies exactly once")
        return 0
    chosen = [mu for mu in MUTANTS if (args.only is None or mu.name in args.only)
              and (args.file is None or mu.file == args.file)]
    unknown = set(args.only or ()) - {mu.name for mu in MUTANTS}
    if unknown or not chosen:
        print(f"error: no such mutants: {sorted(unknown) or args.only}", file=sys.stderr)
        return 2

    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    baseline = None
    task = functools.partial(_task, work=work, baseline=None, timeout=args.timeout,
                             keep=args.keep)
    if not args.no_baseline:
        names = sorted({n for mu in chosen for n in designs_of(mu)})
        base_tree = copy_tree(work / "baseline")
        baseline = tree_digests(base_tree, names)
        shutil.rmtree(base_tree, ignore_errors=True)
        suites = sorted({mu.suite for mu in chosen})
        print(f"baseline: designs {', '.join(names)} elaborated; running {len(suites)} "
              f"suites unmutated", flush=True)
        bad = []
        for rec in run_shards(task, [("suite", s) for s in suites], args.jobs):
            print(f"  baseline {rec['suite']}: {rec['status']} ({rec['seconds']:.0f} s)"
                  f"{' ' + rec['test'] if rec['test'] else ''}", flush=True)
            if rec["status"] != "passed":
                bad.append(rec)
        if bad:
            print(f"error: suites fail without a mutant: {[r['suite'] for r in bad]} (logs in "
                  f"{work})", file=sys.stderr)
            return 1
    task = functools.partial(_task, work=work, baseline=baseline, timeout=args.timeout,
                             keep=args.keep)
    records = []
    for i, rec in enumerate(run_shards(task, [("mutant", mu.name) for mu in chosen],
                                       args.jobs), 1):
        records.append(rec)
        print(f"[{i}/{len(chosen)}] {rec['mutant']}: {rec['status']}"
              f"{' by ' + rec['test'] if rec['test'] else ''} ({rec['seconds']:.0f} s)",
              flush=True)
    command = "python -m verif.mutants " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(records, args.out, command=command, wall=time.monotonic() - t0,
                 jobs=args.jobs)
    s = summarize(records)
    print(f"{s['mutants']} mutants: {s['killed_total']} killed ({s['timeout']} by timeout), "
          f"{s['survived']} survived, {s['equivalent']} equivalent, {s['unchanged']} "
          f"unchanged, {s['error']} errors; report in {args.out / 'report.md'}")
    return 0 if s["survived"] == 0 and s["unchanged"] == 0 and s["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
