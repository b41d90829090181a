"""Formal isolation through the DMA engine (``rtl/dma.py``) with SymbiYosys.

The harness instantiates three blocks of the device unchanged, joined as ``rtl/top.py`` joins
them: :class:`rtl.hvregs.PrivilegedRegs` (the ``s_hv`` register file, no IOTLB),
:class:`rtl.translate.TranslationUnit` (a small grant table) and :class:`rtl.dma.DmaEngine`
(32-bit data). Everything around them is free in every cycle (``AnySeq``):

* **the hypervisor**: any write on the register file's port (``bus.w_en``, ``addr``,
  ``w_data``, ``w_strb``), so any grant entry byte, HV_CTRL and HV_DOMID, at any time;
* **the ring engine**: the command stream (``cmd.valid`` and every field of the command:
  direction, drain, continue, 64-bit virtual address, length, local end), ``pre`` (the early
  address, ``cont``), ``abort`` (device reset), the scratch payload;
* **the memory**: every ready, valid, response and data signal of ``m_axi``, and the RAM disk's
  read data.

**What the ring engine must do** (the DMA port's contract, ``rtl/dma.py``'s ``ring`` member),
assumed: a command (not a drain) is taken no earlier than the second cycle; the ``pre`` address
of the cycle before its acceptance is its ``vaddr``, with
``pre.cont`` low; or it is a *continue* command (``cont``), with ``pre.cont`` high in the cycle
before, that follows a read (not a drain) which ended without a fault and without ``abort``,
``cont`` high in every idle cycle since (the DMA engine keeps its address while idle), and
(``CONT_GAP``) accepted no earlier than three cycles after that read's ``done``: the ring engine
issues it four cycles after (HDR_WAIT, DECODE, DISPATCH, ROUTE, DATA_PIECE in
``rtl/engine.py``); and no command is taken in the cycle after one that ended with a fault or an
abort (``ending_gap``: without it the check fails, docs/isolation.md, "A gap in the port's
contract"). Nothing else is assumed: not the AXI rules on the memory side.

**The harness's own view.** It decodes every write on the port by the register map
(``models/spec.py``: HV_CTRL at 0x004, bits 1:0, modes 0 and 1 without an IOTLB, a write with
bit 1 set leaving the mode unchanged; HV_DOMID at 0x008, bits 15:0; ``GRANT[ref]`` at
``0x1000 + 8 ref``, word 0 at ``+0``, word 1 at ``+4``; address bits 1:0 ignored; byte
strobes) and keeps its own copy of the table as bytes, decoded by Xen's ``grant_entry_v1``
(``include/public/grant_table.h``: ``u16 flags, u16 domid, u32 frame``, little-endian;
``flags & 3`` the type, ``GTF_permit_access`` = 1, ``GTF_readonly`` = 4), never with the RTL's
``GrantEntry``. It follows each command from the stream alone: the next virtual byte
(``cursor``) and the bytes left; a continue command starts where the last one ended.

**The properties** (asserted in every cycle), at every completed address handshake (``ARVALID
& ARREADY`` or ``AWVALID & AWREADY``) of a burst, with the configuration and the entry *as they
were in the burst's first address-valid cycle* (the verdict's: an entry written after the
verdict must make the DMA engine look it up again before the address goes valid; once valid,
AXI holds the address, and a write from then on is ``HV_SYNC``'s business):

* **isolation** in handle mode: the burst's virtual page (the cursor's) is a handle (bit 63),
  its reference is below ``entries``, the harness's entry is ``permit_access`` for the
  configured domain, not ``readonly`` for a write, and the burst's address is in that entry's
  frame: ``addr[63:12] == frame``; in GPA mode, the address is the cursor itself;
* **no page crossing**: ``(addr % 4096) - (addr % W) + (len + 1) * W <= 4096`` (every byte of
  the beats, from the bus alone);
* **the split** (docs/architecture.md, "Bus transactions"): the burst carries the command's next
  bytes, ``min(left, B - cursor % B)`` with ``B = spec.burst_bytes(32)``, in
  ``ceil((cursor % W + n) / W)`` beats, ``addr % 4096 == cursor % 4096``, in the command's
  direction, INCR, full-width beats; no handshake without a command with bytes left; a command
  that ends (``done``) without a fault and without ``abort`` has put every byte in a burst;
* **AXI**: a raised ``ARVALID``/``AWVALID`` stays, with the same address, length and direction,
  until its handshake; never both.

The covers (``cover`` task) reach each burst shape through a granted handshake in handle mode:
a single-beat and a multi-beat read and write, a page-crossing read and write command split
into two bursts (the second on the next page, after its own lookup), a burst that waited for a
new lookup after its entry was written, a GPA-mode read and write, a device write refused by a
read-only grant (fault 5) and a command that completes.

**Lemmas** (asserted too; the properties do not use them): the RTL's table, mode and domain are
the harness's; an answer that is not stale has the current mode and, in handle mode, is the
harness's check of the lookup it recorded on the DMA engine - translation unit port; in ``ADDR``
and ``ISSUE`` the DMA engine's address registers are the harness's cursor, and in ``ISSUE`` the
held answer is a lookup of the cursor's page. They keep each step's query small; the check is
bounded (``bmc``, depth 12 in ``make formal``), not k-induction.

``MUTANTS`` are copies of ``rtl/dma.py``, ``rtl/translate.py`` and ``rtl/hvregs.py`` with one
line changed, applied in memory (never written to ``rtl/``): each must fail the bounded check
without the lemmas, so that what fails is a property.

Run ``python -m formal.dma`` (``make formal``); it writes the RTLIL and ``dma.sby`` under
``build/formal/`` and runs ``yowasp-sby`` with Yices, as ``formal/translate.py`` does.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from amaranth import Array, Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, Fragment
from amaranth.lib import wiring
from amaranth.utils import ceil_log2, exact_log2

from models import spec

from .iotlb import _internal_signals
from .translate import apply_mutant, mutant_parser, run_proof

__all__ = ["MUTANTS", "DmaHarness", "load_variant", "main", "write_job"]

PAGE = spec.PAGE_SIZE
CONT_GAP = 3  # a continue command: accepted at least this many cycles after the read's done


class DmaHarness(Elaboratable):
    """The privileged registers, the translation unit and the DMA engine, with free inputs,
    the harness's shadow of the table and the assertions.

    ``mutant``: the name of a :data:`MUTANTS` entry to build instead of the RTL as it is.
    """

    def __init__(self, *, entries: int = 6, data_width: int = 32, disk_bytes: int = 4096,
                 mutant: str | None = None, ending_gap: bool = True, lemmas: bool = True):
        self.ending_gap = ending_gap
        self.lemmas = lemmas
        classes = load_variant(mutant) if mutant else {}
        if not classes:
            from rtl.dma import DmaEngine
            from rtl.hvregs import PrivilegedRegs
            from rtl.translate import TranslationUnit
            classes = {"DmaEngine": DmaEngine, "TranslationUnit": TranslationUnit,
                       "PrivilegedRegs": PrivilegedRegs}
        self.entries = entries
        self.data_width = data_width
        self.hv = classes["PrivilegedRegs"](entries=entries, iotlb_entries=0)
        self.unit = classes["TranslationUnit"](entries, 0)
        self.dma = classes["DmaEngine"](data_width=data_width, disk_bytes=disk_bytes,
                                        ref_bits=self.unit.ref_bits, set_bits=0)

    def elaborate(self, platform):
        m = Module()
        hv, unit, dma = self.hv, self.unit, self.dma
        m.submodules.hv = hv
        # The DMA engine elaborated here too, for the lemmas' view of a few of its registers.
        dma_frag = Fragment.get(dma.elaborate(platform), platform)
        dma._MustUse__used = True
        m.submodules.dma = dma_frag
        rg = _internal_signals(dma_frag, {"fsm_state", "waiting", "nxt_lo", "nxt_hi", "rem",
                                          "cur_lo", "cur_hi", "in_issue", "write"})
        state = rg["fsm_state"]
        codes = {}
        for code in range(2 ** len(state)):
            with contextlib.suppress(KeyError):  # (codes no state has)
                codes[state.decoder(code).split("/")[0]] = code
        if "ADDR" not in codes:
            raise RuntimeError("the DMA engine's states changed: update formal/dma.py's lemmas")
        # The translation unit elaborated here, so that the lemma below can read its table
        # through extra asynchronous read ports (the properties do not read it).
        inner = unit.elaborate(platform)
        unit._MustUse__used = True
        table, _ = inner._named_submodules["table"]
        peek = [table.read_port(domain="comb") for _ in range(self.entries)]
        for r, port in enumerate(peek):
            m.d.comb += port.addr.eq(r)
        m.submodules.xlate = Fragment.get(inner, platform)
        wiring.connect(m, hv.table, unit.table)
        wiring.connect(m, dma.lookup, unit.lookup)
        wiring.connect(m, dma.status, hv.status.dma)
        W = self.data_width // 8
        lw = exact_log2(W)
        B = spec.burst_bytes(self.data_width)
        lb = exact_log2(B)
        entries = self.entries
        eb = max(1, ceil_log2(entries))

        # ---- Free inputs ------------------------------------------------------------------
        bus, ring, axi = hv.bus, dma.ring, dma.m_axi
        c = ring.cmd.payload
        free = [bus.addr, bus.w_en, bus.w_data, bus.w_strb,
                ring.cmd.valid, c.write, c.drain, c.cont, c.vaddr, c.len, c.disk, c.dpos,
                ring.pre.vaddr, ring.pre.cont, ring.payload, ring.serial,
                dma.abort, dma.disk.rd_lo, dma.disk.rd_hi,
                axi.awready, axi.wready, axi.bid, axi.bresp, axi.bvalid,
                axi.arready, axi.rid, axi.rdata, axi.rresp, axi.rlast, axi.rvalid]
        for sig in free:
            m.d.comb += sig.eq(AnySeq(len(sig)))

        # ---- The harness's shadow of the privileged registers (models/spec.py, Xen) --------
        offset = Cat(Const(0, 2), bus.addr[2:])  # (bits 1:0 ignored)
        hm = Signal()  # HV_CTRL mode 1 (grant handles)
        domid = Signal(16)
        with m.If(bus.w_en & (offset == spec.HV_CTRL) & ~bus.w_data[1]):
            m.d.sync += hm.eq(bus.w_data[0])
        with m.If(bus.w_en & (offset == spec.HV_DOMID)):
            m.d.sync += domid.eq(bus.w_data[:16])
        # the table as bytes: entry r's byte k is grant_entry_v1's byte k
        # (like the table's block RAM, not reset by ``rst``: GRANT[ref] is "not reset")
        shadow = [[Signal(8, name=f"grant{r}_byte{k}", reset_less=True)
                   for k in range(spec.GRANT_ENTRY_BYTES)] for r in range(entries)]
        table_end = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries
        g_write = Signal()
        g_rel = Signal(len(offset))
        m.d.comb += [g_write.eq(bus.w_en & (offset >= spec.HV_GRANT_BASE) & (offset < table_end)),
                     g_rel.eq(offset - spec.HV_GRANT_BASE)]
        for r in range(entries):
            for k in range(spec.GRANT_ENTRY_BYTES):
                word, lane = divmod(k, 4)
                hit = (g_write & (g_rel[3:] == r) & (g_rel[2] == word) & bus.w_strb[lane])
                with m.If(hit):
                    m.d.sync += shadow[r][k].eq(bus.w_data[8 * lane:8 * lane + 8])

        def le(byte_list):
            return Cat(*byte_list)

        # Lemmas (they help the solver; the properties below do not use them): the harness's
        # table, mode and domain are the RTL's (this is also the GRANT[ref] decode, checked).
        if self.lemmas:
            for r, port in enumerate(peek):
                m.d.comb += Assert(port.data == le(shadow[r]), f"lemma: GRANT[{r}] as written")
            m.d.comb += [Assert(hv.table.handle_mode == hm, "lemma: the mode as written"),
                         Assert(hv.table.domid == domid, "lemma: the domain as written")]

        flags_of = Array(le(e[0:2]) for e in shadow)
        domid_of = Array(le(e[2:4]) for e in shadow)
        frame_of = Array(le(e[4:8]) for e in shadow)

        # ---- The ring engine's side of the DMA port (assumed) ------------------------------
        past = Signal()
        m.d.sync += past.eq(1)
        p_addr = Signal(64)  # what the cycle before presented as the next command's address
        p_cont = Signal()
        m.d.sync += [p_addr.eq(ring.pre.vaddr),
                     p_cont.eq(ring.pre.cont)]
        accept = Signal()
        m.d.comb += accept.eq(ring.cmd.valid & ring.cmd.ready)
        done = ring.done
        cont_ok = Signal()  # a continue command may be taken now
        cont_chain = Signal()  # the last command was a read that ended well, cont held since
        since_done = Signal(range(CONT_GAP + 1))
        cmd_abort = Signal()  # abort seen since the command was accepted
        h_active = Signal()  # a command (not a drain) is in progress
        h_write = Signal()
        with m.If(accept):
            m.d.sync += [cont_chain.eq(0), cmd_abort.eq(dma.abort)]
        with m.Elif(dma.abort):
            m.d.sync += cmd_abort.eq(1)
        with m.If(done):
            m.d.sync += [cont_chain.eq(h_active & ~h_write & ~ring.failed & ~cmd_abort
                                       & ~dma.abort),
                         since_done.eq(1)]
        with m.Elif(ring.cmd.ready & ~c.cont):
            m.d.sync += cont_chain.eq(0)
        with m.If(~done & (since_done != CONT_GAP) & (since_done != 0)):
            m.d.sync += since_done.eq(since_done + 1)
        m.d.comb += cont_ok.eq(cont_chain & (since_done == CONT_GAP))
        # A command that ends with a fault or an abort in its address phase may read the table
        # at its next page in its last cycle (``int_ref``), not at ``pre``: the ring engine never
        # hands a command over in the next cycle (it halts after a fault until a device reset,
        # and waits for a notify after one). ``ending_gap=False`` drops this assumption: the
        # check then fails (see docs/isolation.md).
        bad_end = Signal()
        m.d.sync += bad_end.eq(done & (ring.failed | dma.abort))
        with m.If(accept & ~c.drain):
            m.d.comb += Assume(past, "a command is taken no earlier than the second cycle")
            if self.ending_gap:
                m.d.comb += Assume(~bad_end, "no command in the cycle after a failed or "
                                             "aborted one")
            with m.If(c.cont):
                m.d.comb += Assume(p_cont & cont_ok,
                                   "a continue command follows a read that ended well")
            with m.Else():
                m.d.comb += Assume(~p_cont & (p_addr == c.vaddr),
                                   "the address looked up in the cycle before")

        # ---- The harness's record of the command --------------------------------------------
        len_bits = len(c.len)
        cursor = Signal(64)  # the command's next virtual byte
        left = Signal(len_bits)  # its bytes not yet in a burst
        start_page = Signal(52)
        bursts = Signal(2)  # handshakes of the command (saturating)
        entry_written = Signal()  # its current page's entry written since the command began
        with m.If(accept & ~c.drain):
            m.d.sync += [h_active.eq(1), h_write.eq(c.write), left.eq(c.len), bursts.eq(0),
                         entry_written.eq(0)]
            with m.If(~c.cont):
                m.d.sync += [cursor.eq(c.vaddr), start_page.eq(c.vaddr[12:])]
            with m.Else():
                m.d.sync += start_page.eq(cursor[12:])
        with m.Elif(done):
            m.d.sync += h_active.eq(0)

        # ---- The address channel ------------------------------------------------------------
        ar_hs = axi.arvalid & axi.arready
        aw_hs = axi.awvalid & axi.awready
        hs = Signal()
        m.d.comb += hs.eq(ar_hs | aw_hs)
        avalid = axi.arvalid | axi.awvalid
        addr = Signal(64)
        blen = Signal(8)
        m.d.comb += [addr.eq(Mux(axi.awvalid, axi.awaddr, axi.araddr)),
                     blen.eq(Mux(axi.awvalid, axi.awlen, axi.arlen))]
        pend = Signal()  # valid was raised in an earlier cycle and is waiting for its ready
        p_addr_bus = Signal(64)
        p_blen = Signal(8)
        p_aw = Signal()
        m.d.sync += [pend.eq(avalid & ~hs), p_addr_bus.eq(addr), p_blen.eq(blen),
                     p_aw.eq(axi.awvalid)]
        m.d.comb += Assert(~(axi.arvalid & axi.awvalid), "never ARVALID and AWVALID together")
        with m.If(pend):
            m.d.comb += Assert(avalid & (addr == p_addr_bus) & (blen == p_blen)
                               & (axi.awvalid == p_aw),
                               "AXI: a raised address valid stays, unchanged, until its ready")

        # The configuration and the cursor page's entry in the burst's first valid cycle.
        ref = cursor[12:63]
        in_table = ref < entries
        idx = cursor[12:12 + eb]
        first = avalid & ~pend
        s_hm = Signal()
        s_domid = Signal(16)
        s_flags = Signal(16)
        s_edomid = Signal(16)
        s_frame = Signal(32)
        with m.If(first):
            m.d.sync += [s_hm.eq(hm), s_domid.eq(domid), s_flags.eq(flags_of[idx]),
                         s_edomid.eq(domid_of[idx]), s_frame.eq(frame_of[idx])]
        v_hm = Mux(first, hm, s_hm)
        v_domid = Mux(first, domid, s_domid)
        v_flags = Mux(first, flags_of[idx], s_flags)
        v_edomid = Mux(first, domid_of[idx], s_edomid)
        v_frame = Mux(first, frame_of[idx], s_frame)

        # Xen grant_entry_v1: the check the burst must have passed.
        permit = (v_flags & spec.GTF_TYPE_MASK) == spec.GTF_permit_access
        readonly = (v_flags & spec.GTF_readonly) != 0
        granted = (cursor[63] & in_table & permit & (v_edomid == v_domid)
                   & ~(axi.awvalid & readonly))

        # The split (docs/architecture.md, "Bus transactions"), from the cursor.
        to_window = Signal(lb + 1)
        m.d.comb += to_window.eq(B - cursor[:lb])
        nbytes = Signal(max(len_bits, lb + 1))
        m.d.comb += nbytes.eq(Mux(left < to_window, left, to_window))
        beats = Signal(len(nbytes) + 1)
        m.d.comb += beats.eq((cursor[:lw] + nbytes + W - 1) >> lw)
        size = Mux(axi.awvalid, axi.awsize, axi.arsize)
        burst = Mux(axi.awvalid, axi.awburst, axi.arburst)
        span = Signal(14)  # the bytes of the beats from the burst's aligned start in its page
        m.d.comb += span.eq(Cat(Const(0, lw), addr[lw:12]) + ((blen + 1) << lw))
        with m.If(hs):
            m.d.comb += [
                Assert(span <= PAGE, "no burst crosses a 4 KiB page"),
                Assert(h_active & (left != 0), "no burst without a command's bytes left"),
                Assert(aw_hs == h_write, "the command's direction"),
                Assert((size == lw) & (burst == 1), "INCR, full-width beats"),
                Assert(addr[:12] == cursor[:12], "the page offset of the command's next byte"),
                Assert(blen + 1 == beats, "the beats of the command's next piece up to a "
                                          "burst-window end"),
            ]
            with m.If(v_hm):
                m.d.comb += [
                    Assert(granted, "isolation: the page's entry grants the access"),
                    Assert(addr[12:] == v_frame, "isolation: the frame of the page's entry"),
                ]
            with m.Else():
                m.d.comb += Assert(addr == cursor, "GPA mode: the address passes through")
            m.d.sync += [cursor.eq(cursor + nbytes), left.eq(left - nbytes),
                         bursts.eq(Mux(bursts == 3, 3, bursts + 1))]
            with m.If((cursor + nbytes)[12:] != cursor[12:]):
                m.d.sync += entry_written.eq(0)
        with m.If(done & h_active & ~ring.failed & ~cmd_abort & ~dma.abort):
            # (a write's last burst may be handed over in its handshake's cycle)
            m.d.comb += Assert(Mux(hs, left - nbytes, left) == 0,
                               "a command that ends well has put every byte in a burst")
        with m.If(g_write & (g_rel[3:] == idx) & h_active):
            m.d.sync += entry_written.eq(1)

        # ---- Lemmas on the lookups (they make each step's check local; the properties above
        # do not use them). The harness records each kept lookup from the port between the
        # DMA engine and the translation unit: the reference read in the cycle before ``keep``,
        # ``high``, ``handle`` and ``write`` with ``keep``; the answer two cycles later.
        lk = dma.lookup
        rq_ref = Signal(len(lk.ref))
        m.d.sync += rq_ref.eq(lk.ref)
        k_valid = Signal()
        k_ref = Signal(len(lk.ref))
        k_high, k_handle, k_write = Signal(), Signal(), Signal()
        a_ref = Signal(len(lk.ref))
        a_high, a_handle, a_write = Signal(), Signal(), Signal()
        m.d.sync += [k_valid.eq(lk.keep), k_ref.eq(rq_ref), k_high.eq(lk.high),
                     k_handle.eq(lk.handle), k_write.eq(lk.write)]
        with m.If(k_valid):
            m.d.sync += [a_ref.eq(k_ref), a_high.eq(k_high), a_handle.eq(k_handle),
                         a_write.eq(k_write)]
        a_flags = flags_of[a_ref[:eb]]
        a_granted = (a_handle & ~a_high & (a_ref < entries)
                     & ((a_flags & spec.GTF_TYPE_MASK) == spec.GTF_permit_access)
                     & (domid_of[a_ref[:eb]] == domid)
                     & ~(a_write & ((a_flags & spec.GTF_readonly) != 0)))
        if self.lemmas:
            self._lemmas(m, lk, hm, a_granted, a_ref, a_high, a_handle, a_write, frame_of, eb,
                         rg, codes, state, h_active, h_write, cursor, left)

        # ---- Non-vacuity: every burst shape reached through a granted handshake -------------
        good = hs & v_hm & granted
        new_page = cursor[12:] != start_page
        first_good = Signal()  # the command's first burst was granted in handle mode
        with m.If(hs & (bursts == 0)):
            m.d.sync += first_good.eq(good)
        m.d.comb += [
            Cover(good & ar_hs & (blen == 0), "single-beat read"),
            Cover(good & ar_hs & (blen != 0), "multi-beat read"),
            Cover(good & aw_hs & (blen == 0), "single-beat write"),
            Cover(good & aw_hs & (blen != 0), "multi-beat write"),
            Cover(good & ar_hs & new_page & (bursts == 1) & first_good,
                  "page-crossing read: its second burst, on the next page"),
            Cover(good & aw_hs & new_page & (bursts == 1) & first_good,
                  "page-crossing write: its second burst, on the next page"),
            Cover(good & entry_written & (bursts == 0),
                  "a burst after its entry was written during the command"),
            Cover(hs & ~v_hm & ar_hs, "GPA-mode read"),
            Cover(hs & ~v_hm & aw_hs, "GPA-mode write"),
            Cover(done & h_active & (ring.fault == spec.FAULT_READONLY),
                  "a device write refused by a read-only grant"),
            Cover(done & h_active & ~ring.failed & hm & (bursts != 0), "a command completes"),
        ]
        return m

    def _lemmas(self, m, lk, hm, a_granted, a_ref, a_high, a_handle, a_write, frame_of, eb,
                rg, codes, state, h_active, h_write, cursor, left):
        """Lemmas on the DMA engine's registers and the held answer (asserted like the
        properties, which do not use them)."""
        with m.If(~lk.stale):
            m.d.comb += Assert(lk.mode == hm, "lemma: an answer not stale has the mode")
            with m.If(lk.mode):
                m.d.comb += Assert(lk.ok == a_granted, "lemma: the answer is the entry's check")
                with m.If(lk.ok):
                    m.d.comb += Assert(lk.frame == frame_of[a_ref[:eb]],
                                       "lemma: the answer's frame is the entry's")
        in_addr = state == codes["ADDR"]
        with m.If(in_addr):
            m.d.comb += Assert(h_active & (Cat(rg["nxt_lo"], rg["nxt_hi"]) == cursor)
                               & (rg["rem"] == left) & (rg["write"] == h_write),
                               "lemma: ADDR starts the burst at the harness's cursor")
        with m.If(rg["in_issue"]):
            m.d.comb += Assert(h_active & (Cat(rg["cur_lo"], rg["cur_hi"]) == cursor)
                               & (rg["write"] == h_write),
                               "lemma: ISSUE's burst is at the harness's cursor")
            with m.If(~rg["waiting"]):
                m.d.comb += Assert((a_ref == cursor[12:12 + len(a_ref)])
                                   & (a_high == (cursor[12 + len(a_ref):63] != 0))
                                   & (a_handle == cursor[63]) & (a_write == h_write),
                                   "lemma: ISSUE's answer is a lookup of the cursor's page")



# ---- Mutants: broken copies of the RTL that the bounded check must reject ---------------------

#: name -> (file under rtl/, what it breaks, text in the file, replacement)
MUTANTS = {
    "page_split_cross": (
        "dma.py", "the page split: a burst that ends a burst window is taken as ending its "
        "page when the window's lowest index bit is set (off by one in the page-end test)",
        "cross = reaches & nxt_lo[lb:12].all()",
        "cross = reaches & nxt_lo[lb:11].all()"),
    "burst_len_plus_one": (
        "dma.py", "the burst length: one beat too many when the command's last byte ends a beat",
        "beats_m1 = Mux(fits, (rem[:lb + 1] + first_m1.as_signed()) >> lw,",
        "beats_m1 = Mux(fits, (rem[:lb + 1] + nxt_lo[:lw]) >> lw,"),
    "next_page_same_ref": (
        "dma.py", "the next page's lookup reads the current page's entry",
        "int_ref.eq(key(nxt_hi_inc)), next_high.eq(inc_high)",
        "int_ref.eq(key(nxt_hi)), next_high.eq(inc_high)"),
    "lookup_dir_stale": (
        "dma.py", "a command's lookup is made with the previous command's direction "
        "(the read-only check sees a read)",
        "m.d.comb += lk.write.eq(Mux(in_idle, c.write, write))",
        "m.d.comb += lk.write.eq(write)"),
    "stale_ignored": (
        "dma.py", "a stale verdict is used (no new lookup after a table write)",
        "m.d.comb += go.eq(~self.abort & ~waiting & ~lk.stale & lk.ok",
        "m.d.comb += go.eq(~self.abort & ~waiting & lk.ok"),
    "readonly_dropped": (
        "translate.py", "the read-only check dropped",
        "(write2 & entry.flags.readonly, spec.FAULT_READONLY),",
        "(write2 & entry.flags.readonly & 0, spec.FAULT_READONLY),"),
    "grant_words_swapped": (
        "hvregs.py", "a GRANT word decoded to the other half of the entry (word 1, the frame, "
        "written into flags and domid)",
        "m.d.comb += tb.wen.eq(Mux(offset[2], bus.w_strb << 4, bus.w_strb))",
        "m.d.comb += tb.wen.eq(Mux(offset[2], bus.w_strb, bus.w_strb << 4))"),
    "grant_ref_decode": (
        "hvregs.py", "GRANT[ref]'s reference decoded from the word offset (>> 2 for >> 3)",
        "ref.eq((offset - spec.HV_GRANT_BASE) >> 3)",
        "ref.eq((offset - spec.HV_GRANT_BASE) >> 2)"),
}

_CLASS_OF = {"dma.py": "DmaEngine", "translate.py": "TranslationUnit",
             "hvregs.py": "PrivilegedRegs"}


def load_variant(name: str) -> dict:
    """``{class name: class}`` with mutant ``name`` applied to its file (the other two blocks
    as they are), built from an in-memory copy of the source; ``rtl/`` is not written."""
    from rtl.dma import DmaEngine
    from rtl.hvregs import PrivilegedRegs
    from rtl.translate import TranslationUnit
    classes = {"DmaEngine": DmaEngine, "TranslationUnit": TranslationUnit,
               "PrivilegedRegs": PrivilegedRegs}
    fname, _what, old, new = MUTANTS[name]
    classes[_CLASS_OF[fname]] = getattr(apply_mutant(fname, name, old, new), _CLASS_OF[fname])
    return classes


SBY = """\
[tasks]
bmc
cover

[options]
bmc: mode bmc
bmc: depth {bmc_depth}
cover: mode cover
cover: depth {cover_depth}

[engines]
smtbmc {solver}

[script]
read_rtlil dma.il
prep -flatten -top top
memory_map
opt -fast

[files]
dma.il
"""


def write_job(out: Path, *, entries: int = 6, mutant: str | None = None, bmc_depth: int,
              cover_depth: int, ending_gap: bool = True, lemmas: bool = True,
              solver: str = "yices") -> Path:
    """Write ``dma.il`` (the harness; ``lemmas``: with the lemmas) and ``dma.sby`` into
    ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    text = rtlil.convert(DmaHarness(entries=entries, mutant=mutant, ending_gap=ending_gap,
                                    lemmas=lemmas), name="top", ports=[])
    (out / "dma.il").write_text(text)
    sby = out / "dma.sby"
    sby.write_text(SBY.format(bmc_depth=bmc_depth, cover_depth=cover_depth, solver=solver))
    return sby


def failing_step(log: Path) -> str:
    """The step and the assertion (its message in this file) of a failed bounded check."""
    text = log.read_text()
    found = re.search(r"Assert failed in top: \S*dma\.py:(\d+)", text)
    step = re.findall(r"Checking assertions in step (\d+)", text)
    what = "?"
    if found:
        lines = Path(__file__).read_text().splitlines()
        start = int(found.group(1)) - 1
        for n, line in enumerate(lines[start:start + 4]):
            quoted = re.search(r'f?"([^"]+)"', line)
            if quoted:
                what = quoted.group(1)
                more = re.match(r'\s*"([^"]+)"', lines[start + n + 1])
                what += more.group(1) if more else ""
                break
    return f"step {step[-1] if step else '?'}: {what}"


def main(argv: list[str] | None = None) -> int:
    ap = mutant_parser(__doc__, entries=6, tasks=["bmc", "cover"], mutants=MUTANTS)
    ap.add_argument("--bmc-depth", type=int, default=12)
    ap.add_argument("--cover-depth", type=int, default=12)
    ap.add_argument("--mutant-depth", type=int, default=12,
                    help="depth of the bounded check each mutant must fail")
    ap.add_argument("--no-ending-gap", action="store_true",
                    help="drop the assumption that no command follows a failed or aborted one "
                         "in the next cycle (the check then fails: docs/isolation.md)")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()

    def job(mutant: str | None, task: str) -> tuple[Path, int]:
        sub = f"dma_e{args.entries}" + (f"_{mutant}" if mutant else "")
        depth = args.mutant_depth if mutant else {"bmc": args.bmc_depth,
                                                   "cover": args.cover_depth}[task]
        if args.no_ending_gap:
            sub += "_no_gap"
        return write_job(args.out / sub, entries=args.entries, mutant=mutant,
                         bmc_depth=depth, cover_depth=depth, ending_gap=not args.no_ending_gap,
                         lemmas=not (mutant or args.no_ending_gap)), depth

    return run_proof(args, "DMA+unit+hv", job, {"bmc": "bounded", "cover": "cover"},
                     why=failing_step, title="DMA engine ",
                     passed="all checks passed, every mutant caught")


if __name__ == "__main__":
    sys.exit(main())
