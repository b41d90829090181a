"""Formal proof of the IOTLB (``rtl/iotlb.py``) with SymbiYosys: no hit without a live mapping.

The harness instantiates :class:`rtl.iotlb.Iotlb` unchanged (8 entries: 4 sets of 2 ways),
drives every input with a free value each cycle (``AnySeq``: the staged mapping, the command,
the sets (``small``, ``small_fast``, ``large``, ``large_fast``, ``large_sel``), ``key``,
``fast_key``, ``fast``, ``write`` and ``enable`` of a lookup, ``rst``) and checks its answers
against a *shadow* of the
mappings the hypervisor's commands leave live, written here from docs/iotlb.md and not from
the RTL:

* the solver picks one IOVA page ``A`` (``AnyConst``, the *watched* page) and the harness
  records the one mapping that may be live for it: an insert (command 1, size 12 to 30) of a
  range covering ``A`` makes it that mapping (base, size, physical page, R, W); an insert that
  overlaps it without covering ``A``, an invalidation (command 2) that overlaps it and an
  invalidate all (command 3, or command 2 with a size above 30) remove it; ``rst`` clears it;
* **no hit without a live mapping**: a lookup of ``A`` (its small and large set read in cycle
  ``t``, from ``small_fast`` and ``large_fast`` when ``large_sel``; key ``A`` in ``t + 1`` from the
  source the RTL selects, ``fast_key`` when ``fast``, else ``key``, with the direction
  ``write``) that answers in ``t + 2`` without ``stale`` answers a
  miss when no mapping covering ``A`` is live, and on a hit it answers that mapping's R and W,
  the physical page of ``A`` through it (``pa + (A - base)``), and ``fault``/``ok`` for the
  direction (5 for a write without W, 11 for a read without R, else 0 and ``ok``). A miss while
  one is live is allowed: the IOTLB is a cache and an insert elsewhere may evict it;
* **enable**: no answer that is not ``stale`` is a hit while ``enable`` is low (IOVA mode off);
  a miss answers 0 on ``ok``, ``fault``, ``r``, ``w`` and ``ppn``;
* **stale exactly while a command runs**: ``stale`` in ``t + 2`` exactly when a command ran
  or started in ``t``, ``t + 1`` or ``t + 2`` (so answers are not withheld forever), and
  ``active`` exactly in the cycles a command starts or runs.

The one assumption is the register file's: ``IOTLB_CMD`` is not written while ``ctrl.busy``
(writes on ``s_hv`` wait while a command runs).

For the induction the harness also asserts invariants, the only place it reads the RTL's
internals (the properties above do not): every valid way that covers ``A`` holds exactly the
live mapping (base page, size, physical page, R, W) in the set a lookup of ``A`` reads for its
size, or, while a command runs, the mapping live before it, in a set the command has not
cleared yet (stage 3 clears a step's sets one cycle after the compare); ``ctrl.busy`` exactly
outside the state machine's ``IDLE``; while a command runs, the latched registers (``op``, the
range, ``c_set``, the new entry ``new``) hold the harness's record of it; the walk's pipeline
is consistent (each stage's sets are a step's, a narrow command has one step, a wide walk's
stages hold consecutive steps, ``DRAIN1`` to ``DRAIN3`` hold the last step in stage 1 to 3); a
step's read data and compare operands are its sets' rows and the command's range, and the
ways stage 3 clears (``match_a3``, ``match_b3``) are those of its sets that overlap the range,
and the valid bits stage 2 and 3 hold (``v_a2``, ``v_b2``, ``v_a3``, ``v_b3``) are its sets';
in ``WRITE`` the chosen way is one-hot and ``w_bits`` is the set's valid bits with it. The
storage is read through extra asynchronous read ports of the block RAM; a way is decoded by its
layout (base page, covered page-number bits, physical page, R, W: docs/iotlb.md fixes what an
entry holds, not its bits).
With these the ``prove`` task (k-induction, depth 3) proves the properties for every trace of
any length; the ``cover`` task shows that a write hit through a 4 KiB mapping, a read hit
through a large mapping, a write hit without W (fault 5) and a miss after the mapping was
removed are reached by checked lookups.

``MUTANTS`` are broken copies of ``rtl/iotlb.py`` (a compare that ignores a bit, an
invalidation that clears only one of the two sets, an answer not marked stale): each must fail
the bounded check from reset (``bmc`` task, on the properties without the invariants), which
shows the proof bites.

Run ``python -m formal.iotlb`` (``make formal``): it writes the RTLIL and the ``.sby`` file
under ``build/formal/`` and runs ``yowasp-sby`` with the Yices SMT solver, as
``formal/translate.py`` does.
"""

from __future__ import annotations

import functools
import operator
import sys
from pathlib import Path

from amaranth import Array, Cat, Const, Elaboratable, Module, Mux, ResetSignal, Signal
from amaranth.asserts import AnyConst, AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, Fragment
from amaranth.hdl._ast import Assign

from models import spec

from .translate import apply_mutant, mutant_parser, run_proof

__all__ = ["MUTANTS", "IotlbHarness", "load_variant", "main", "write_job"]

PAGE = spec.PAGE_SHIFT  # 12
VPN_BITS = 64 - PAGE  # an IOVA's page number
SIZE_BITS = spec.IOTLB_MAX_SIZE - PAGE  # page-number bits a mapping may cover (18)
LARGE = SIZE_BITS  # page-number bit where a large mapping's set index starts (IOVA bit 30)

# One way as the insert's entry register holds it: the base page, the page-number bits the
# entry covers (bit i: page bit i lies inside the mapping), the base physical page, R, W.
W_VPN = (0, VPN_BITS)
W_MASK = (W_VPN[1], W_VPN[1] + SIZE_BITS)
W_PPN = (W_MASK[1], W_MASK[1] + VPN_BITS)
W_R = W_PPN[1]
W_W = W_R + 1
WAY_BITS = W_W + 1


def stored_way(wd):
    """``(vpn, bits, ppn, r, w)`` of one way as a set's block-RAM word stores it (the ways side
    by side, way 0 lowest): the base page's low SIZE_BITS bits each followed by the covered bit
    of the same page bit, then the base page's other bits, the physical page, R, W."""
    pairs = 2 * SIZE_BITS
    vpn = Cat(*[wd[2 * i] for i in range(SIZE_BITS)], wd[pairs:pairs + VPN_BITS - SIZE_BITS])
    bits = Cat(*[wd[2 * i + 1] for i in range(SIZE_BITS)])
    ppn_at = pairs + VPN_BITS - SIZE_BITS
    return vpn, bits, wd[ppn_at:ppn_at + VPN_BITS], wd[ppn_at + VPN_BITS], wd[ppn_at + VPN_BITS + 1]


def covered(size):
    """The page-number bits a mapping of ``2^size`` bytes covers (``size`` 12 to 30): bit ``i``
    is set when page-number bit ``i`` lies inside the mapping (the bits below its size)."""
    return Cat(*[size > PAGE + i for i in range(SIZE_BITS)])


def wide(bits):
    """``bits`` (page-number bits 17:0) as a mask of the whole page number."""
    return Cat(bits, Const(0, VPN_BITS - SIZE_BITS))


def overlap(base_a, bits_a, base_b, bits_b):
    """Two ranges overlap when they agree on every address bit above the larger of the two
    sizes (docs/iotlb.md)."""
    return ((base_a ^ base_b) & ~wide(bits_a | bits_b)) == 0


def _internal_signals(fragment, names: set[str]) -> dict[str, Signal]:
    """The signals called ``names`` among those the statements of ``fragment`` (the IOTLB's
    own, not its submodules') use, each of which must be unique: the induction's invariants
    read a few registers of the IOTLB."""
    found: dict[str, dict] = {}
    for stmts in fragment.statements.values():
        for stmt in stmts:
            for sig in stmt._lhs_signals() | stmt._rhs_signals():
                if sig.name in names:
                    found.setdefault(sig.name, {})[id(sig)] = sig
    missing = names - found.keys()
    if missing or any(len(s) != 1 for s in found.values()):
        raise RuntimeError(f"the IOTLB's internals changed: signals {sorted(names)} not found "
                           f"once each ({ {k: len(v) for k, v in found.items()} }); "
                           "update formal/iotlb.py's invariants")
    return {k: next(iter(v.values())) for k, v in found.items()}


def _registered(fragment, src: Signal) -> Signal:
    """The register that ``fragment``'s ``sync`` statements load with ``src`` alone."""
    found = [st.lhs for st in fragment.statements.get("sync", [])
             if isinstance(st, Assign) and st.rhs is src and isinstance(st.lhs, Signal)]
    if len(found) != 1:
        raise RuntimeError(f"the IOTLB's internals changed: {len(found)} registers of "
                           f"{src.name}; update formal/iotlb.py's invariants")
    return found[0]


class IotlbHarness(Elaboratable):
    """The IOTLB with free inputs, the shadow of the watched page and the assertions.

    ``iotlb_cls``: the component to check (:class:`rtl.iotlb.Iotlb`, or a mutant);
    ``invariants``: also assert the induction's invariants (off for the mutants' bounded check,
    so that what fails there is the property itself).
    """

    def __init__(self, entries: int = 8, iotlb_cls=None, invariants: bool = True):
        if iotlb_cls is None:
            from rtl.iotlb import Iotlb as iotlb_cls
        self.entries = entries
        self.invariants = invariants
        self.dut = iotlb_cls(entries)

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        sb = dut.set_bits
        inner = dut.elaborate(platform)  # (elaborated here: the invariants add read ports)
        dut._MustUse__used = True
        ctrl = dut.ctrl

        # ---- Free inputs; the register file's one guarantee --------------------------------
        for sig in (ctrl.stage_iova, ctrl.stage_pa, ctrl.stage_size, ctrl.stage_r, ctrl.stage_w,
                    ctrl.cmd, dut.small, dut.small_fast, dut.large, dut.large_fast,
                    dut.large_sel, dut.key,
                    dut.fast_key, dut.fast, dut.write, dut.enable):
            m.d.comb += sig.eq(AnySeq(len(sig)))
        m.d.comb += Assume(~ctrl.busy | (ctrl.cmd == 0), "IOTLB_CMD waits while busy")
        watched = Signal(VPN_BITS)  # the page A
        m.d.comb += watched.eq(AnyConst(VPN_BITS))

        # ---- The command, decoded from docs/iotlb.md ----------------------------------------
        cmd, size = ctrl.cmd, ctrl.stage_size
        size_ok = (size >= spec.IOTLB_MIN_SIZE) & (size <= spec.IOTLB_MAX_SIZE)
        is_insert = (cmd == spec.IOTLB_CMD_INSERT) & size_ok
        is_inval = cmd == spec.IOTLB_CMD_INVALIDATE
        is_all = (cmd == spec.IOTLB_CMD_INVALIDATE_ALL) | (is_inval & (size > spec.IOTLB_MAX_SIZE))
        starts = Signal()  # a command starts in this cycle (an insert of a bad size does nothing)
        m.d.comb += starts.eq(is_insert | is_inval | is_all)
        running = Signal()  # ... or runs: lookups answer stale
        m.d.comb += running.eq(ctrl.busy | starts)
        c_bits = Signal(SIZE_BITS)  # an invalidation below 4 KiB counts as 4 KiB: no bits
        m.d.comb += c_bits.eq(covered(size))
        c_base = Signal(VPN_BITS)
        m.d.comb += c_base.eq(ctrl.stage_iova[PAGE:] & ~wide(c_bits))
        c_ppn = Signal(VPN_BITS)
        m.d.comb += c_ppn.eq(ctrl.stage_pa[PAGE:] & ~wide(c_bits))

        # ---- The shadow: the mapping that may be live for A ---------------------------------
        live = Signal()
        s_base = Signal(VPN_BITS)
        s_size = Signal(6)
        s_ppn = Signal(VPN_BITS)
        s_r, s_w = Signal(), Signal()
        s_bits = Signal(SIZE_BITS)
        m.d.comb += s_bits.eq(covered(s_size))
        hits_live = overlap(s_base, s_bits, c_base, c_bits)
        covers_a = overlap(watched, 0, c_base, c_bits)
        with m.If(is_all):
            m.d.sync += live.eq(0)
        with m.Elif(is_inval & hits_live):
            m.d.sync += live.eq(0)
        with m.Elif(is_insert & covers_a):
            m.d.sync += [live.eq(1), s_base.eq(c_base), s_size.eq(size), s_ppn.eq(c_ppn),
                         s_r.eq(ctrl.stage_r), s_w.eq(ctrl.stage_w)]
        with m.Elif(is_insert & hits_live):
            m.d.sync += live.eq(0)
        # (under the assumption, no command starts while busy: ``starts`` is a command's start)

        # ---- A lookup of A: sets read in t (``*_fast`` when ``large_sel``),
        # key in t + 1 (``fast_key`` when ``fast``, else ``key``) with its direction, answer in
        # t + 2 -----------------------------------------------------------------------------
        look1, look2 = Signal(), Signal()
        run1, run2 = Signal(), Signal()
        dir2 = Signal()  # the lookup's direction (1: a write)
        m.d.sync += [
            look1.eq((Mux(dut.large_sel, dut.small_fast, dut.small) == watched[:sb])
                     & (Mux(dut.large_sel, dut.large_fast, dut.large)
                        == watched[LARGE:LARGE + sb])),
            look2.eq(look1 & (Mux(dut.fast, dut.fast_key, dut.key) == watched)),
            dir2.eq(dut.write),
            run1.eq(running), run2.eq(run1 | running),
        ]
        m.d.comb += [
            Assert(dut.active == running, "active exactly when a command starts or runs"),
            Assert(dut.stale == (run2 | running),
                   "stale exactly when a command ran during the lookup (t to t + 2)"),
        ]
        with m.If(~dut.stale & dut.hit):
            m.d.comb += Assert(dut.enable, "no hit answered while enable is low")
        with m.If(~dut.hit):
            m.d.comb += Assert((dut.ok == 0) & (dut.fault == 0) & (dut.r == 0) & (dut.w == 0)
                               & (dut.ppn == 0), "a miss answers all 0")
        answer = look2 & ~dut.stale
        expect_ppn = s_ppn | (watched & wide(s_bits))
        expect_fault = Mux(dir2, Mux(s_w, 0, spec.FAULT_READONLY),
                           Mux(s_r, 0, spec.FAULT_IOTLB_NO_READ))
        with m.If(answer & dut.hit):
            m.d.comb += [
                Assert(live, "isolation: no hit unless a live mapping covers the page"),
                Assert(dut.r == s_r, "the live mapping's R"),
                Assert(dut.w == s_w, "the live mapping's W"),
                Assert(dut.ppn == expect_ppn, "the page's physical page through the mapping"),
                Assert(dut.fault == expect_fault,
                       "the fault of the live mapping for the direction (5: write without W, "
                       "11: read without R)"),
                Assert(dut.ok == (expect_fault == 0), "ok: the live mapping allows the direction"),
            ]

        if self.invariants:
            self._invariants(m, inner, platform, watched, starts, cmd, size, is_all, c_ppn,
                             live, s_base, s_size, s_bits, s_ppn, s_r, s_w)
        else:
            m.submodules.dut = inner

        # ---- Non-vacuity ---------------------------------------------------------------------
        was_live = Signal()
        with m.If(live):
            m.d.sync += was_live.eq(1)
        m.d.comb += [
            Cover(answer & dut.hit & (s_size == PAGE) & dut.w & dir2 & dut.ok,
                  "a write hit through a 4 KiB mapping"),
            Cover(answer & dut.hit & (s_size > PAGE) & dut.r & ~dir2 & dut.ok,
                  "a read hit through a large mapping"),
            Cover(answer & dut.hit & dir2 & (dut.fault == spec.FAULT_READONLY),
                  "a write hit without W: fault 5"),
            Cover(answer & ~dut.hit & ~live & was_live, "a miss after the mapping was removed"),
        ]
        return m

    def _invariants(self, m, inner, platform, watched, starts, cmd, size, is_all, c_ppn,
                    live, s_base, s_size, s_bits, s_ppn, s_r, s_w):
        """The invariants that make the properties inductive (checked like the properties)."""
        dut = self.dut
        ctrl = dut.ctrl
        sets = self.entries // spec.IOTLB_WAYS
        sb = dut.set_bits
        # The harness's record of the command in flight (set in its start cycle) and of the
        # mapping that was live for A before it.
        h_cmd = Signal(2)
        h_vpn = Signal(VPN_BITS)
        h_size = Signal(6)
        h_ppn = Signal(VPN_BITS)
        h_r, h_w, h_all = Signal(), Signal(), Signal()
        p_live, p_r, p_w = Signal(), Signal(), Signal()
        p_base = Signal(VPN_BITS)
        p_size = Signal(6)
        p_ppn = Signal(VPN_BITS)
        with m.If(starts):
            m.d.sync += [h_cmd.eq(cmd), h_vpn.eq(ctrl.stage_iova[PAGE:]), h_size.eq(size),
                         h_ppn.eq(c_ppn), h_r.eq(ctrl.stage_r), h_w.eq(ctrl.stage_w),
                         h_all.eq(is_all),
                         p_live.eq(live), p_base.eq(s_base), p_size.eq(s_size), p_ppn.eq(s_ppn),
                         p_r.eq(s_r), p_w.eq(s_w)]
        h_bits = Signal(SIZE_BITS)
        p_bits = Signal(SIZE_BITS)
        m.d.comb += [h_bits.eq(covered(h_size)), p_bits.eq(covered(p_size))]
        h_base = h_vpn & ~wide(h_bits)
        h_insert = h_cmd == spec.IOTLB_CMD_INSERT
        busy = ctrl.busy

        def well_formed(on, base, size, bits, ppn, what):
            with m.If(on):
                m.d.comb += [
                    Assert((size >= spec.IOTLB_MIN_SIZE) & (size <= spec.IOTLB_MAX_SIZE),
                           f"inv: the {what} size"),
                    Assert(((base | ppn) & wide(bits)) == 0, f"inv: the {what} range aligned"),
                    Assert(overlap(watched, 0, base, bits), f"inv: the {what} range covers A"),
                ]
        well_formed(live, s_base, s_size, s_bits, s_ppn, "live")
        well_formed(busy & p_live, p_base, p_size, p_bits, p_ppn, "previous")
        same_as_p = ((s_base == p_base) & (s_size == p_size) & (s_ppn == p_ppn) & (s_r == p_r)
                     & (s_w == p_w))
        with m.If(busy & p_live & ~h_all & ~overlap(p_base, p_bits, h_base, h_bits)):
            m.d.comb += Assert(live & same_as_p, "inv: a command that misses the mapping")
        with m.If(busy & h_insert & overlap(watched, 0, h_base, h_bits)):
            m.d.comb += Assert(live & (s_base == h_base) & (s_size == h_size) & (s_ppn == h_ppn)
                               & (s_r == h_r) & (s_w == h_w), "inv: an insert covering A")

        # The IOTLB's internals: its storage (read through extra ports), the command registers,
        # the walk's pipeline.
        ram, _ = inner._named_submodules["ram"]
        if ram.shape.width != spec.IOTLB_WAYS * WAY_BITS:
            raise RuntimeError(f"the IOTLB's way is {ram.shape.width // spec.IOTLB_WAYS} bits, "
                               f"not {WAY_BITS}: update formal/iotlb.py's decoding")
        peek = [ram.read_port(domain="comb") for _ in range(sets)]
        m.submodules.dut = frag = Fragment.get(inner, platform)
        rg = _internal_signals(frag, {
            "valid", "fsm_state", "op", "c_vpn", "c_mask", "c_all", "c_wide", "c_set", "new",
            "step", "step1", "step2", "step3", "raw_a", "raw_b", "key2", "c_vpn1", "kmask1",
            "kall2",
            "same3", "match_a3", "match_b3", "v_a2", "v_b2", "v_a3", "v_b3", "w_way", "w_bits",
            "port_a__addr",
            "port_b__addr", "port_a__data", "port_b__data"})
        # (the stages' set registers, found as the registers of the read addresses)
        set_a1 = _registered(frag, rg["port_a__addr"])
        set_b1 = _registered(frag, rg["port_b__addr"])
        set_a2, set_b2 = _registered(frag, set_a1), _registered(frag, set_b1)
        set_a3, set_b3 = _registered(frag, set_a2), _registered(frag, set_b2)
        fsm = rg["fsm_state"]
        names = ("IDLE", "WALK", "DRAIN1", "DRAIN2", "DRAIN3", "VICTIM", "WRITE")
        st = {fsm.decoder(i).split("/")[0]: i for i in range(len(names))}
        if set(st) != set(names) or st["IDLE"] != 0:
            raise RuntimeError(f"the IOTLB's states changed ({st}): update formal/iotlb.py")

        def in_state(*which):
            return functools.reduce(operator.or_, [fsm == st[n] for n in which])

        for n in range(sets):
            m.d.comb += peek[n].addr.eq(n)
        row = Array(p.data for p in peek)
        step1, step2, step3 = rg["step1"], rg["step2"], rg["step3"]
        valid = rg["valid"]
        ways = spec.IOTLB_WAYS
        new = rg["new"]
        m.d.comb += [
            Assert(busy == (fsm != st["IDLE"]), "inv: busy exactly outside IDLE"),
            Assert(~step1 | in_state("WALK", "DRAIN1"), "inv: a step's read in WALK or DRAIN1"),
            Assert(~step2 | in_state("WALK", "DRAIN1", "DRAIN2"),
                   "inv: a step's compare before DRAIN3"),
            Assert(~step3 | in_state("WALK", "DRAIN1", "DRAIN2", "DRAIN3"),
                   "inv: a step's clear before VICTIM"),
            Assert(~step3 | (rg["same3"] == (set_a3 == set_b3)),
                   "inv: a step's same3 names one set read twice"),
        ]
        # The walk's pipeline: a step's two sets are those the command names (its IOVA's small
        # and large set; sets 2k and 2k + 1 in a wide walk, one step after the other), a
        # narrow command has one step, and the stages of a wide walk hold consecutive steps.
        c_vpn, c_wide = rg["c_vpn"], rg["c_wide"]
        stages = ((step1, set_a1, set_b1), (step2, set_a2, set_b2), (step3, set_a3, set_b3))
        for k, (on, sa, sbb) in enumerate(stages, 1):
            with m.If(on):
                m.d.comb += Assert(Mux(c_wide, (sa[0] == 0) & (sbb == (sa | 1)),
                                       (sa == c_vpn[:sb]) & (sbb == c_vpn[LARGE:LARGE + sb])),
                                   f"inv: stage {k}'s sets are a step's")
        walk_now = fsm == st["WALK"]
        with m.If(busy & ~c_wide):
            m.d.comb += Assert((walk_now.as_unsigned() + step1 + step2 + step3) <= 1,
                               "inv: a narrow command has one step")
        step_reg = rg["step"]
        with m.If(busy & c_wide):
            with m.If(walk_now):
                m.d.comb += Assert(step1 == (step_reg != 0), "inv: a wide walk's stage 1")
                with m.If(step1):
                    m.d.comb += Assert((set_a1[1:] + 1)[:len(step_reg)] == step_reg,
                                       "inv: stage 1 holds the step before")
            with m.If(step1 & step2):
                m.d.comb += Assert((set_a2[1:] + 1)[:sb - 1] == set_a1[1:],
                                   "inv: stage 2 holds the step before stage 1's")
            with m.If(step2 & step3):
                m.d.comb += Assert((set_a3[1:] + 1)[:sb - 1] == set_a2[1:],
                                   "inv: stage 3 holds the step before stage 2's")
        m.d.comb += [
            Assert((fsm != st["DRAIN1"]) | step1, "inv: DRAIN1 reads the last step"),
            Assert((fsm != st["DRAIN2"]) | (step2 & ~step1), "inv: DRAIN2 compares it"),
            Assert((fsm != st["DRAIN3"]) | (step3 & ~step2 & ~step1), "inv: DRAIN3 clears it"),
        ]
        h_set = Mux(h_size > PAGE, h_vpn[LARGE:LARGE + sb], h_vpn[:sb])
        with m.If(busy):
            m.d.comb += Assert(
                (rg["op"] == h_cmd) & (rg["c_vpn"] == h_vpn) & (rg["c_mask"] == h_bits)
                & (rg["c_all"] == h_all) & (rg["c_wide"] == (h_all | (h_size > PAGE)))
                & (rg["c_set"] == h_set)
                & (new[W_VPN[0]:W_VPN[1]] == h_base) & (new[W_MASK[0]:W_MASK[1]] == h_bits)
                & (new[W_PPN[0]:W_PPN[1]] == h_ppn) & (new[W_R] == h_r) & (new[W_W] == h_w),
                "inv: the command registers hold the command")
        with m.If(step1):
            m.d.comb += Assert((rg["port_a__data"] == row[set_a1])
                               & (rg["port_b__data"] == row[set_b1]),
                               "inv: a step's read data are its sets")
        # the compare's first level (stage 1) takes the command's page and range from copies
        # that hold them in a step and are 0 outside one, but in the cycle after a reset (the
        # copies have no reset: a walk's copy may stay a cycle, when no entry is valid)
        rst_q = Signal(reset_less=True)
        m.d.sync += rst_q.eq(ResetSignal())
        with m.If(step1):
            m.d.comb += Assert((rg["c_vpn1"] == rg["c_vpn"]) & (rg["kmask1"] == rg["c_mask"]),
                               "inv: stage 1 has the command's page and range in a step")
        with m.Elif(~rst_q):
            m.d.comb += Assert((rg["c_vpn1"] == 0) & (rg["kmask1"] == 0),
                               "inv: stage 1 has no command's page or range outside a step")
        with m.If(step2):
            m.d.comb += Assert((rg["raw_a"] == row[set_a2]) & (rg["raw_b"] == row[set_b2])
                               & (rg["key2"] == rg["c_vpn"]) & (rg["kall2"] == rg["c_all"]),
                               "inv: a step's compare has its sets and the command's range")
            # the valid bits stage 1 read are the sets' (nothing wrote them since)
            m.d.comb += Assert((rg["v_a2"] == valid.word_select(set_a2, ways))
                               & (rg["v_b2"] == valid.word_select(set_b2, ways)),
                               "inv: a step's valid bits in stage 2 are its sets'")
        with m.If(step3):
            # the valid bits stage 2 read are the sets' (nothing wrote them since)
            m.d.comb += Assert((rg["v_a3"] == valid.word_select(set_a3, ways))
                               & (rg["v_b3"] == valid.word_select(set_b3, ways)),
                               "inv: a step's valid bits in stage 3 are its sets'")
            # the ways the compare matched (cleared at the end of this cycle): those valid ways
            # of the step's sets that overlap the command's range (the second set's only when
            # it is not the first)
            for tag, set3, match3, only in (("a", set_a3, rg["match_a3"], 1),
                                            ("b", set_b3, rg["match_b3"], ~rg["same3"])):
                word3 = row[set3]
                v3 = valid.word_select(set3, ways)
                for w in range(ways):
                    wd_vpn, wd_bits, _, _, _ = stored_way(word3[w * WAY_BITS:(w + 1) * WAY_BITS])
                    hit = (v3[w] & only
                           & (rg["c_all"] | overlap(wd_vpn, wd_bits, rg["c_vpn"], rg["c_mask"])))
                    m.d.comb += Assert(match3[w] == hit,
                                       f"inv: a step's clear of set {tag} way {w} is its compare")
        w_way, w_bits = rg["w_way"], rg["w_bits"]
        with m.If(fsm == st["WRITE"]):
            m.d.comb += Assert((w_bits == (valid.word_select(rg["c_set"], ways) | w_way))
                               & (w_way != 0) & ((w_way & (w_way - 1)) == 0),
                               "inv: the insert writes one way and keeps its set's other bits")
        step = rg["step"]
        home_s = Mux(s_size > PAGE, watched[LARGE:LARGE + sb], watched[:sb])
        home_p = Mux(p_size > PAGE, watched[LARGE:LARGE + sb], watched[:sb])
        for n in range(sets):
            # set n has not been compared yet by the command in flight
            pending = (((fsm == st["WALK"])
                        & Mux(c_wide, (n >> 1) >= step,
                              (c_vpn[:sb] == n) | (c_vpn[LARGE:LARGE + sb] == n)))
                       | (step1 & ((set_a1 == n) | (set_b1 == n)))
                       | (step2 & ((set_a2 == n) | (set_b2 == n)))
                       | (step3 & ((set_a3 == n) | (set_b3 == n))))
            for w in range(spec.IOTLB_WAYS):
                e_vpn, e_bits, e_ppn, e_r, e_w = stored_way(
                    peek[n].data[w * WAY_BITS:(w + 1) * WAY_BITS])
                e_covers = valid[n * spec.IOTLB_WAYS + w] & overlap(watched, 0, e_vpn, e_bits)
                as_live = (live & (e_vpn == s_base) & (e_bits == s_bits) & (e_ppn == s_ppn)
                           & (e_r == s_r) & (e_w == s_w) & (home_s == n))
                as_before = (busy & p_live & pending & (e_vpn == p_base) & (e_bits == p_bits)
                             & (e_ppn == p_ppn) & (e_r == p_r) & (e_w == p_w) & (home_p == n))
                with m.If(e_covers):
                    m.d.comb += Assert(
                        as_live | as_before,
                        f"inv: set {n} way {w} covers A only as the live mapping, in its set "
                        "(or as the one before, until the command compares its set)")


# ---- Mutants: broken copies of rtl/iotlb.py that the proof must reject -------------------------

#: name -> (what it breaks, text in rtl/iotlb.py, replacement)
MUTANTS = {
    "compare_bit0": (
        "the compare ignores page-number bit 0 (IOVA bit 12)",
        "m.d.comb += match.eq(vbits[w] & (kall2 | (diff == 0))",
        "m.d.comb += match.eq(vbits[w] & (kall2 | (diff[1:] == 0))"),
    "invalidate_one_set": (
        "a command clears the matching ways of its first set only (the second read port's are "
        "kept)",
        "m.d.comb += bits_2.eq(v_b3 & ~match_b3)",
        "m.d.comb += bits_2.eq(v_b3)"),
    "stale_late": (
        "an answer is not stale when a command starts in its answer cycle",
        "m.d.comb += self.stale.eq(act2 | self.active)",
        "m.d.comb += self.stale.eq(act2)"),
}


def load_variant(name: str):
    """The ``Iotlb`` class of rtl/iotlb.py with mutant ``name`` applied."""
    _what, old, new = MUTANTS[name]
    return apply_mutant("iotlb.py", name, old, new).Iotlb


SBY = """\
[tasks]
prove
cover
bmc

[options]
prove: mode prove
prove: depth {prove_depth}
cover: mode cover
cover: depth {cover_depth}
bmc: mode bmc
bmc: depth {bmc_depth}

[engines]
smtbmc {solver}

[script]
prove: read_rtlil iotlb.il
cover: read_rtlil props.il
bmc: read_rtlil props.il
prep -top top

[files]
iotlb.il
props.il
"""


def write_job(out: Path, *, entries: int = 8, mutant: str | None = None, prove_depth: int,
              cover_depth: int, bmc_depth: int, solver: str = "yices") -> Path:
    """Write ``iotlb.il`` (the harness with the invariants, for ``prove``), ``props.il`` (the
    properties alone, for ``cover`` and ``bmc``: a mutant must fail the property itself) and
    ``iotlb.sby`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, invariants in (("iotlb", True), ("props", False)):
        cls = load_variant(mutant) if mutant else None
        text = rtlil.convert(IotlbHarness(entries, cls, invariants=invariants), name="top",
                             ports=[])
        (out / f"{name}.il").write_text(text)
    sby = out / "iotlb.sby"
    sby.write_text(SBY.format(prove_depth=prove_depth, cover_depth=cover_depth,
                              bmc_depth=bmc_depth, solver=solver))
    return sby


def main(argv: list[str] | None = None) -> int:
    ap = mutant_parser(__doc__, entries=8, tasks=["prove", "cover"], mutants=MUTANTS)
    ap.add_argument("--prove-depth", type=int, default=3)
    ap.add_argument("--cover-depth", type=int, default=16)
    ap.add_argument("--bmc-depth", type=int, default=16,
                    help="depth of the bounded check each mutant must fail")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    depths = {"prove": args.prove_depth, "cover": args.cover_depth, "bmc": args.bmc_depth}

    def job(mutant: str | None, task: str) -> tuple[Path, int]:
        sub = f"iotlb_e{args.entries}" + (f"_{mutant}" if mutant else "")
        return write_job(args.out / sub, entries=args.entries, mutant=mutant,
                         prove_depth=args.prove_depth, cover_depth=args.cover_depth,
                         bmc_depth=args.bmc_depth), depths[task]

    return run_proof(args, f"Iotlb({args.entries})", job,
                     {"prove": "k-induction", "cover": "cover", "bmc": "bounded"}, width=6,
                     title="IOTLB ", passed="all proofs passed, every mutant caught")


if __name__ == "__main__":
    sys.exit(main())
