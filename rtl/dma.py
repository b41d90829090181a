"""DMA engine: virtual accesses in, translated AXI4 bursts out.

A command is "read (or write) ``len`` bytes at virtual address ``vaddr``", with the local end of
the transfer being either the RAM disk (at byte ``dpos``) or the 32-byte scratch buffer
``sbuf`` of the ring engine (at byte ``dpos``), or a *drain*: wait until every posted write has
its response. The engine splits an access as ``docs/architecture.md`` ("Bus transactions")
specifies: one translation per 4 KiB page, one INCR burst per ``spec.burst_bytes(data_width)``
window. Its cycle-level behaviour is ``docs/timing.md``; in short:

* the table lookup of a command's first page is issued in the cycle the command is accepted,
  and the lookup of the next page in the cycle the previous burst ends, so a lookup never
  adds a cycle to an access (the answer is registered in the ``ADDR`` cycle that every burst
  has in both modes, and a failed check ends the command in the next cycle instead of the
  address handshake: no valid is raised with it);
* reads are one burst at a time; ``done`` pulses with the last beat;
* writes are *posted*: ``done`` pulses once the last beat has entered the write pipeline and the
  address has been accepted; responses are collected in the background and a drain command
  reports the first one that failed.

Bytes travel at any alignment at one bus beat per cycle: a beat's valid lanes are rotated to
their disk lanes (reads) or from them (writes) by ``(dpos - lane) mod W``.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from models import spec

from .axi import BURST_INCR, RESP_OKAY, AXI4Signature
from .params import check_data_width

__all__ = ["MAX_POSTED_WRITES", "SBUF_BYTES", "DmaEngine"]

SBUF_BYTES = 32
MAX_POSTED_WRITES = 8  # write bursts whose response may be outstanding at once
W_FIFO_DEPTH = 4


def _at_most(value, limit):
    """``min(value, limit)``: a beat carries at most ``limit`` bytes."""
    return Mux(value < limit, value, limit)


def _rotl_bytes(value, amount, nbytes):
    """Rotate ``value`` (``nbytes`` bytes) left by ``amount`` bytes: byte l <- byte l - amount."""
    both = Cat(value, value)
    return (both << (amount * 8))[nbytes * 8:2 * nbytes * 8]


def _rotr_bytes(value, amount, nbytes):
    """Rotate ``value`` right by ``amount`` bytes: byte l <- byte l + amount."""
    both = Cat(value, value)
    return (both >> (amount * 8))[:nbytes * 8]


class DmaEngine(wiring.Component):
    """Translated DMA between guest memory (``m_axi``) and the RAM disk or scratch buffer.

    Parameters
    ----------
    data_width : int
        ``m_axi`` data width: 32, 64 or 128.
    disk_word_bits : int
        Width of a RAM disk word index.

    Members
    -------
    cmd_* : In
        A command is taken in a cycle with ``cmd_valid`` and ``cmd_ready``. ``cmd_drain``
        makes it a drain (the other fields are ignored).
    done, fault, fault_addr : Out
        ``done`` pulses for one cycle when the command ends (see the module docstring); ``fault``
        is then 0 or the fault cause, ``fault_addr`` the virtual address (translation faults)
        or the physical address (bus errors; for a drain, the first failed write).
    xlate : Out
        Pulses once per table lookup (statistics).
    abort : In
        Device reset: end the command at the next burst boundary (no further burst starts).
    tbl_changed, tbl_ref, cfg_changed : In
        Grant entry ``tbl_ref`` was written; the mode or the domain was written. A translation
        that may have changed is looked up again before the next burst (grant revocation,
        ``HV_SYNC``).
    inflight, burst_done : Out
        Number of bus transactions issued (or being issued) and not completed; one of them
        completes this cycle. Completions come in issue order.
    busy : Out
        A command or a posted write is in progress.
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH, disk_word_bits: int,
                 ref_bits: int = 51, id_width: int = 4):
        self._data_width = check_data_width(data_width)
        lanes = data_width // 8
        self._disk_word_bits = disk_word_bits
        self._ref_bits = ref_bits
        # byte positions on the disk (one more bit: a position may be the disk's end) or in
        # the scratch buffer
        self._dpos_bits = max(6, disk_word_bits + exact_log2(lanes) + 1)
        super().__init__({
            "handle_mode": In(1),
            "abort": In(1),
            "tbl_changed": In(1),
            "tbl_ref": In(ref_bits),
            "cfg_changed": In(1),
            "inflight": Out(range(MAX_POSTED_WRITES + 3)),
            "burst_done": Out(1),
            "cmd_valid": In(1), "cmd_ready": Out(1), "cmd_write": In(1), "cmd_drain": In(1),
            "cmd_vaddr": In(64), "cmd_len": In(32), "cmd_disk": In(1), "cmd_dpos": In(32),
            "done": Out(1), "fault": Out(4), "fault_addr": Out(64), "busy": Out(1),
            "xlate": Out(1),
            "xl_req_valid": Out(1), "xl_req_vaddr": Out(64), "xl_req_write": Out(1),
            "xl_resp_valid": In(1), "xl_resp_paddr": In(64), "xl_resp_fault": In(4),
            "disk_rd_word": Out(disk_word_bits), "disk_rd_lo": In(data_width),
            "disk_rd_hi": In(data_width),
            "disk_wr_word": Out(disk_word_bits), "disk_wr_data": Out(data_width),
            "disk_wr_en_lo": Out(lanes), "disk_wr_en_hi": Out(lanes),
            "sbuf": In(8 * SBUF_BYTES), "sbuf_we": Out(SBUF_BYTES),
            "sbuf_wdata": Out(8 * SBUF_BYTES),
            "m_axi": Out(AXI4Signature(addr_width=64, data_width=data_width,
                                       id_width=id_width)),
        })

    def elaborate(self, platform):
        m = Module()
        W = self._data_width // 8
        lw = exact_log2(W)
        B = spec.burst_bytes(self._data_width)
        lb = exact_log2(B)
        axi = self.m_axi

        # Command state
        write = Signal()
        to_disk = Signal()
        mode = Signal()
        cur = Signal(64)
        rem = Signal(32)
        dpos = Signal(self._dpos_bits)
        page = Signal(32)  # frame of the current page (handle mode)
        page_ok = Signal()  # `page` holds a translation made after the last change to it
        # The grant reference `page` was translated from. References are compared on the
        # table's index bits only: a translated page's reference is inside the table, and a
        # reference outside it faults however often it is looked up again.
        page_ref = Signal(self._ref_bits)
        lookup = Signal()  # a table lookup answers in this ADDR cycle
        lookup_ref = Signal(self._ref_bits)  # ... for this reference
        lookup_stale = Signal()  # ... but its entry changed in the cycle it was made
        # Current burst
        b_addr = Signal(64)
        b_n = Signal(range(B + 1))
        b_err = Signal()
        b_lookup = Signal()  # this burst's translation is the lookup answering after ADDR
        b_first = Signal()  # the first cycle after ADDR (the lookup's answer is valid)
        v_fault = Signal(4)  # the translation of this burst failed: cause (that cycle only)
        burst_addr = Signal(64)  # the burst's physical address
        arlen = Signal(8)

        m.d.comb += [
            axi.awid.eq(0), axi.arid.eq(0),
            axi.awburst.eq(BURST_INCR), axi.arburst.eq(BURST_INCR),
            axi.awsize.eq(lw), axi.arsize.eq(lw),
            axi.awcache.eq(0b0011), axi.arcache.eq(0b0011),
            axi.awprot.eq(0b010), axi.arprot.eq(0b010),
            axi.awlock.eq(0), axi.arlock.eq(0),
            axi.awaddr.eq(burst_addr), axi.araddr.eq(burst_addr),
            axi.awlen.eq(arlen), axi.arlen.eq(arlen),
        ]

        # Burst geometry of the next burst, from the command state (used in state ADDR). The
        # low 12 bits of the physical address are those of the virtual address, so the
        # geometry never waits for the table.
        n_next = Signal(range(B + 1))
        room = Signal(range(B + 1))
        fits = Signal()  # the rest of the command fits in this burst: it is the last one
        m.d.comb += [
            room.eq(B - cur[:lb]),
            fits.eq((rem[lb + 1:] == 0) & (rem[:lb + 1] <= room)),
            n_next.eq(Mux(fits, rem[:lb + 1], room)),
        ]
        # Where the burst ends, computed in ADDR so that the burst's last cycle only moves
        # registers (and issues the next page's lookup from one). A burst never crosses a
        # page, so the page number is this one or the next.
        # Either the burst runs to the next burst-size boundary (`to_edge`; the boundary is the
        # current window plus one, an increment independent of the length), or the command
        # ends inside the window (no carry out of the window's offset): no carry chain
        # depends on another.
        to_edge = Signal()
        m.d.comb += to_edge.eq(~((rem[lb + 1:] == 0) & (rem[:lb + 1] < room)))
        window = cur[lb:]
        end_addr = Signal(64)
        m.d.comb += end_addr.eq(Mux(to_edge, Cat(Const(0, lb), window + 1),
                                    Cat((cur[:lb] + rem[:lb])[:lb], window)))
        b_end = Signal(64)
        b_cross = Signal()  # the burst ends on a page boundary
        b_final = Signal()  # ... and ends the command
        # The first beat's byte count and whether it is the burst's only beat. The window's room
        # is never less than the beat's (B is a multiple of W), so neither waits for n_next.
        first_nb = Signal(range(W + 1))
        first_last = Signal()
        beat_room = Signal(range(W + 1))
        m.d.comb += [
            beat_room.eq(W - cur[:lw]),
            first_nb.eq(Mux((rem[lw + 1:] == 0) & (rem[:lw + 1] < beat_room), rem[:lw + 1],
                            beat_room)),
            first_last.eq(((rem[lw + 1:] == 0) & (rem[:lw + 1] <= beat_room))
                          | cur[lw:lb].all()),
        ]
        # Beats - 1: to the window's edge, the words left in the window; else from the length.
        beats_m1 = Signal(8)
        m.d.comb += beats_m1.eq(Mux(to_edge, ~cur[lw:lb],
                                    (cur[:lw] + rem[:lb + 1] - 1) >> lw))

        # ---- Read beats (R channel -> RAM disk or sbuf) ---------------------------------------
        r_lo = Signal(range(W))
        r_left = Signal(range(B + 1))
        r_dpos = Signal(self._dpos_bits)
        r_nb = Signal(range(W + 1))  # bytes of the next beat (registered, like w_nb)
        r_take = Signal()  # a good beat is delivered this cycle
        d0 = Signal(lw)
        m.d.comb += d0.eq(r_dpos[:lw])
        rot = Signal(lw)
        m.d.comb += rot.eq(d0 - r_lo)
        en_lo = Signal(W)
        en_hi = Signal(W)
        for lane in range(W):
            # disk lane `lane` holds stream byte (lane - d0) mod W of this beat
            k = Signal(lw + 1, name=f"r_k{lane}")
            m.d.comb += k.eq((lane - d0) & (W - 1))
            m.d.comb += [
                en_lo[lane].eq((lane >= d0) & (k < r_nb)),
                en_hi[lane].eq((lane < d0) & (k < r_nb)),
            ]
        m.d.comb += [
            self.disk_wr_word.eq(r_dpos[lw:]),
            self.disk_wr_data.eq(_rotl_bytes(axi.rdata, rot, W)),
        ]
        with m.If(r_take & to_disk):
            m.d.comb += [self.disk_wr_en_lo.eq(en_lo), self.disk_wr_en_hi.eq(en_hi)]
        # The scratch buffer is written like the disk: as SBUF_BYTES // W words, the rotated beat
        # going to word ``r_dpos // W`` (lanes ``en_lo``) and the next word (lanes ``en_hi``). A
        # scratch command never crosses the buffer's end (dpos + len <= SBUF_BYTES).
        sb_words = SBUF_BYTES // W
        sb_word = Signal(range(sb_words))
        m.d.comb += [sb_word.eq(r_dpos[lw:]),
                     self.sbuf_wdata.eq(Cat(*[self.disk_wr_data] * sb_words))]
        for k in range(SBUF_BYTES):
            word, lane = divmod(k, W)
            hi = en_hi[lane] & (sb_word == word - 1) if word else 0  # never wraps to word 0
            with m.If(r_take & ~to_disk):
                m.d.comb += self.sbuf_we[k].eq((en_lo[lane] & (sb_word == word)) | hi)

        # ---- Write beats (RAM disk or sbuf -> W channel) ---------------------------------------
        # S0 issues a disk read for the next beat; S1 waits for it (the disk's read latency is
        # two cycles); S2 rotates the data into memory lanes and pushes the beat into a small
        # FIFO that feeds the W channel.
        m.submodules.wfifo = wfifo = SyncFIFO(width=8 * W + W + 1, depth=W_FIFO_DEPTH)
        w_active = Signal()
        w_lo = Signal(range(W))
        w_left = Signal(range(B + 1))
        w_dpos = Signal(self._dpos_bits)
        w_disk = Signal()
        # The next beat's byte count and whether it is the burst's last, kept in registers
        # (computed in ADDR, then from the bytes left after each beat) so that the end of a
        # burst is one gate away from a flip-flop (issue 5, Fmax).
        w_nb = Signal(range(W + 1))
        w_last = Signal()
        w_rest = Signal(range(B + 1))
        m.d.comb += w_rest.eq(w_left - w_nb)
        s1_valid = Signal()
        s1_lo = Signal(range(W))
        s1_nb = Signal(range(W + 1))
        s1_dpos = Signal(self._dpos_bits)
        s1_last = Signal()
        s1_disk = Signal()
        s2_valid = Signal()
        s2_lo = Signal(range(W))
        s2_nb = Signal(range(W + 1))
        s2_dpos = Signal(self._dpos_bits)
        s2_last = Signal()
        s2_disk = Signal()
        issue = Signal()
        w_last_issue = Signal()  # the burst's last beat enters S0 this cycle
        m.d.comb += [
            issue.eq(w_active & (v_fault == 0)
                     & (wfifo.level + s1_valid + s2_valid < W_FIFO_DEPTH)),
            w_last_issue.eq(issue & w_last),
            self.disk_rd_word.eq(w_dpos[lw:]),
        ]
        m.d.sync += s1_valid.eq(issue)
        with m.If(issue):
            m.d.sync += [
                s1_lo.eq(w_lo), s1_nb.eq(w_nb), s1_dpos.eq(w_dpos), s1_disk.eq(w_disk),
                s1_last.eq(w_last),
                w_dpos.eq(w_dpos + w_nb), w_left.eq(w_rest), w_lo.eq(0),
                w_nb.eq(_at_most(w_rest, W)), w_last.eq(w_rest <= W),
                w_active.eq(~w_last),
            ]
        m.d.sync += [s2_valid.eq(s1_valid), s2_lo.eq(s1_lo), s2_nb.eq(s1_nb), s2_dpos.eq(s1_dpos),
                     s2_last.eq(s1_last), s2_disk.eq(s1_disk)]
        s2_d0 = Signal(lw)
        m.d.comb += s2_d0.eq(s2_dpos[:lw])
        combined = Signal(8 * W)
        # The scratch buffer is read like the disk: words ``w_dpos // W`` and the next one,
        # registered in S0 (the next word wraps; its lanes are then never strobed).
        sb_lo = Signal(8 * W)
        sb_hi = Signal(8 * W)
        sb_rd = Signal(range(sb_words))
        m.d.comb += sb_rd.eq(w_dpos[lw:])
        sb_lo2 = Signal(8 * W)
        sb_hi2 = Signal(8 * W)
        with m.If(issue):
            m.d.sync += [sb_lo.eq(self.sbuf.word_select(sb_rd, 8 * W)),
                         sb_hi.eq(self.sbuf.word_select((sb_rd + 1)[:len(sb_rd)], 8 * W))]
        m.d.sync += [sb_lo2.eq(sb_lo), sb_hi2.eq(sb_hi)]
        src_lo = Mux(s2_disk, self.disk_rd_lo, sb_lo2)
        src_hi = Mux(s2_disk, self.disk_rd_hi, sb_hi2)
        for lane in range(W):
            m.d.comb += combined[8 * lane:8 * lane + 8].eq(
                Mux(lane >= s2_d0, src_lo[8 * lane:8 * lane + 8], src_hi[8 * lane:8 * lane + 8]))
        s2_rot = Signal(lw)
        m.d.comb += s2_rot.eq(s2_d0 - s2_lo)
        s2_data = Signal(8 * W)
        m.d.comb += s2_data.eq(_rotr_bytes(combined, s2_rot, W))
        s2_strb = Signal(W)
        for lane in range(W):
            m.d.comb += s2_strb[lane].eq((lane >= s2_lo) & (lane < s2_lo + s2_nb))
        m.d.comb += [
            wfifo.w_en.eq(s2_valid),
            wfifo.w_data.eq(Cat(s2_data, s2_strb, s2_last)),
            axi.wvalid.eq(wfifo.r_rdy),
            axi.wdata.eq(wfifo.r_data[:8 * W]),
            axi.wstrb.eq(wfifo.r_data[8 * W:9 * W]),
            axi.wlast.eq(wfifo.r_data[9 * W]),
            wfifo.r_en.eq(axi.wready),
        ]

        # ---- Posted write responses ------------------------------------------------------------
        # Every accepted write address is remembered until its response, so that a failed
        # write can be reported with its address when the ring engine drains.
        m.submodules.bq = bq = SyncFIFO(width=64, depth=MAX_POSTED_WRITES)
        aw_hs = Signal()
        m.d.comb += [
            aw_hs.eq(axi.awvalid & axi.awready),
            axi.bready.eq(1),
            bq.w_en.eq(aw_hs), bq.w_data.eq(burst_addr),
            bq.r_en.eq(axi.bvalid),
        ]
        werr = Signal()
        werr_addr = Signal(64)
        with m.If(axi.bvalid & (axi.bresp != RESP_OKAY) & ~werr):
            m.d.sync += [werr.eq(1), werr_addr.eq(bq.r_data)]
        posted = Signal()  # some write response is outstanding
        m.d.comb += posted.eq(bq.level != 0)

        # ---- Translation requests -----------------------------------------------------------
        xl_vaddr = Signal(64)
        xl_wr = Signal()
        xl_req = Signal()
        m.d.comb += [self.xl_req_vaddr.eq(xl_vaddr), self.xl_req_valid.eq(xl_req),
                     self.xl_req_write.eq(xl_wr)]

        def changed(ref):
            """A write this cycle may change the translation of grant reference ``ref``."""
            return self.cfg_changed | (self.tbl_changed & (self.tbl_ref == ref[:self._ref_bits]))

        # The table is read every cycle at the address a lookup would use in this state (the
        # command's in IDLE, the current one in XLATE, the next burst's otherwise): only the
        # request's valid depends on the decisions of the cycle (issue 5, Fmax).
        in_idle = Signal()
        in_xlate = Signal()
        m.d.comb += [xl_vaddr.eq(Mux(in_idle, self.cmd_vaddr, Mux(in_xlate, cur, b_end))),
                     xl_wr.eq(Mux(in_idle, self.cmd_write, write))]

        def request_lookup(vaddr, wr):
            ref = vaddr[spec.PAGE_SHIFT:spec.PAGE_SHIFT + self._ref_bits]
            m.d.comb += xl_req.eq(1)
            m.d.sync += [lookup.eq(1), lookup_ref.eq(ref), lookup_stale.eq(changed(ref))]

        with m.If(changed(page_ref)):
            m.d.sync += page_ok.eq(0)

        # The first cycle after ADDR: a lookup made for the burst answers now. Its frame makes
        # the burst's address (and becomes the current page, unless its entry is being
        # written right now); a fault ends the command instead of the address handshake.
        m.d.sync += b_first.eq(0)
        answer = b_first & b_lookup
        m.d.comb += [
            v_fault.eq(Mux(answer, self.xl_resp_fault, 0)),
            burst_addr.eq(Mux(answer, Cat(b_addr[:spec.PAGE_SHIFT], self.xl_resp_paddr[12:44]),
                              b_addr)),
        ]
        with m.If(answer):
            m.d.sync += [b_addr.eq(burst_addr), page.eq(self.xl_resp_paddr[12:44]),
                         page_ok.eq((self.xl_resp_fault == 0) & ~changed(lookup_ref)),
                         page_ref.eq(lookup_ref)]

        # ---- Control ----------------------------------------------------------------------------
        fault = Signal(4)
        fault_addr = Signal(64)
        m.d.comb += [self.fault.eq(fault), self.fault_addr.eq(fault_addr)]
        with m.If(self.abort & ~posted):
            m.d.sync += werr.eq(0)  # a reset forgets the responses of the old requests

        def finish(cause=0, addr=0):
            """The command ends this cycle."""
            m.d.comb += [self.done.eq(1), fault.eq(cause), fault_addr.eq(addr)]
            m.next = "IDLE"

        def next_burst(n_done):
            """The current burst has ended (reads) or been handed over (writes)."""
            m.d.sync += [cur.eq(b_end), rem.eq(rem - n_done), dpos.eq(dpos + n_done),
                         lookup.eq(0)]
            with m.If(b_final | self.abort):
                finish()
            with m.Else():
                with m.If(mode & b_cross):
                    request_lookup(b_end, write)  # the next page, in the burst's last cycle
                m.next = "ADDR"

        rd_inflight = Signal()
        aw_pending = Signal()
        aw_sent = Signal()
        pipe_busy = Signal()
        m.d.comb += [
            pipe_busy.eq(posted | w_active | s1_valid | s2_valid | wfifo.r_rdy),
            self.busy.eq(pipe_busy),
            self.inflight.eq(bq.level + rd_inflight + aw_pending),
            self.burst_done.eq(axi.bvalid | (axi.rvalid & axi.rready & axi.rlast)),
        ]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.cmd_ready.eq(1), in_idle.eq(1)]
                # The command registers follow the inputs in every idle cycle (they are unused
                # while idle), so that cmd_valid only steers the state (issue 5, Fmax).
                m.d.sync += [
                    write.eq(self.cmd_write), to_disk.eq(self.cmd_disk),
                    mode.eq(self.handle_mode), cur.eq(self.cmd_vaddr),
                    rem.eq(self.cmd_len), dpos.eq(self.cmd_dpos), lookup.eq(0),
                ]
                with m.If(self.cmd_valid):
                    with m.If(self.cmd_drain):
                        m.next = "DRAIN"
                    with m.Elif(self.cmd_len == 0):
                        finish()
                    with m.Else():
                        with m.If(self.handle_mode):
                            request_lookup(self.cmd_vaddr, self.cmd_write)
                        m.next = "ADDR"
            with m.State("XLATE"):  # a lookup again: the table changed since the last one
                m.d.comb += [self.busy.eq(1), in_xlate.eq(1)]
                with m.If(self.abort):
                    finish()
                with m.Else():
                    request_lookup(cur, write)
                    m.next = "ADDR"
            with m.State("ADDR"):
                m.d.comb += [self.busy.eq(1), self.xlate.eq(lookup & mode)]
                paddr = Signal(64)
                m.d.comb += paddr.eq(Mux(mode, Cat(cur[:spec.PAGE_SHIFT], page), cur))
                # A lookup made for this burst answers in the next cycle (the translation unit's
                # latency is two cycles), the first of RADDR/WADDR, which acts on it before any
                # valid goes out.
                m.d.sync += [
                    b_end.eq(end_addr),
                    # the window is the page's last: the burst ends on a page boundary
                    b_cross.eq(to_edge & cur[lb:spec.PAGE_SHIFT].all()), b_final.eq(fits),
                ]
                m.d.sync += [b_addr.eq(paddr), b_n.eq(n_next), arlen.eq(beats_m1),
                             b_err.eq(0), aw_sent.eq(0), lookup.eq(0),
                             b_lookup.eq(mode & lookup)]
                fresh = lookup & ~lookup_stale & ~changed(lookup_ref)
                with m.If(self.abort):
                    finish()
                with m.Elif(mode & ~fresh & (lookup | ~page_ok | changed(page_ref))):
                    m.next = "XLATE"  # never issue a burst with a translation that is stale
                with m.Else():
                    with m.If(write & (bq.level == MAX_POSTED_WRITES)):
                        m.next = "ADDR"  # wait for a response slot (then look up again)
                        with m.If(lookup):
                            m.d.sync += page_ok.eq(0)
                    with m.Elif(~write & posted):
                        m.next = "ADDR"  # reads are ordered after every posted write
                        with m.If(lookup):
                            m.d.sync += page_ok.eq(0)
                    with m.Elif(write):
                        m.d.sync += [w_active.eq(1), w_lo.eq(cur[:lw]), w_left.eq(n_next),
                                     w_nb.eq(first_nb), w_last.eq(first_last),
                                     w_dpos.eq(dpos), w_disk.eq(to_disk), b_first.eq(1)]
                        m.next = "WADDR"
                    with m.Else():
                        m.d.sync += [r_lo.eq(cur[:lw]), r_left.eq(n_next), r_dpos.eq(dpos),
                                     r_nb.eq(first_nb),
                                     b_first.eq(1)]
                        m.next = "RADDR"
            with m.State("RADDR"):
                m.d.comb += self.busy.eq(1)
                with m.If(v_fault != 0):
                    finish(v_fault, cur)  # no address goes out
                with m.Else():
                    m.d.comb += [axi.arvalid.eq(1), rd_inflight.eq(1)]
                    with m.If(axi.arready):
                        m.next = "RDATA"
            with m.State("RDATA"):
                m.d.comb += [self.busy.eq(1), axi.rready.eq(1), rd_inflight.eq(1)]
                with m.If(axi.rvalid):
                    ok = axi.rresp == RESP_OKAY
                    m.d.comb += r_take.eq(ok & ~b_err)
                    r_rest = r_left - r_nb
                    m.d.sync += [r_lo.eq(0), r_left.eq(r_rest), r_dpos.eq(r_dpos + r_nb),
                                 r_nb.eq(_at_most(r_rest, W))]
                    with m.If(~ok):
                        m.d.sync += b_err.eq(1)
                    with m.If(axi.rlast):
                        with m.If(~ok | b_err):
                            finish(spec.FAULT_BUS_ERROR, b_addr)
                        with m.Else():
                            next_burst(b_n)
            with m.State("WADDR"):
                # The address and the beats of a burst go out side by side; the burst is
                # handed over once both are (its response is collected in the background).
                m.d.comb += self.busy.eq(1)
                with m.If(v_fault != 0):
                    m.d.sync += w_active.eq(0)  # `issue` is held off: no beat goes out
                    finish(v_fault, cur)
                with m.Else():
                    m.d.comb += [axi.awvalid.eq(~aw_sent), aw_pending.eq(~aw_sent)]
                    aw_done = aw_sent | axi.awready
                    with m.If(axi.awready):
                        m.d.sync += aw_sent.eq(1)
                    with m.If(aw_done & (w_last_issue | ~w_active)):
                        next_burst(b_n)
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~pipe_busy):
                    m.d.sync += werr.eq(0)
                    with m.If(werr):
                        finish(spec.FAULT_BUS_ERROR, werr_addr)
                    with m.Else():
                        finish()
        return m
