"""DMA engine: virtual accesses in, translated AXI4 bursts out.

A command is "read (or write) ``len`` bytes at virtual address ``vaddr``", with the local end of
the transfer being either the RAM disk (at byte ``dpos``) or the 32-byte scratch buffer
``sbuf`` of the ring engine (at byte ``dpos``). The engine splits the access as
``docs/architecture.md`` ("Bus transactions") specifies: one translation per 4 KiB page, one INCR
burst per ``spec.burst_bytes(data_width)`` window, one transaction at a time.

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

__all__ = ["SBUF_BYTES", "DmaEngine"]

SBUF_BYTES = 32


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
        A command is taken in a cycle with ``cmd_valid`` and ``cmd_ready``.
    done, fault, fault_addr : Out
        ``done`` pulses for one cycle when the command ends; ``fault`` is then 0 or the fault
        cause, ``fault_addr`` the virtual address (translation faults) or physical address
        (bus errors).
    xlate : Out
        Pulses once per table lookup (statistics).
    abort : In
        Device reset: end the command after the burst in flight (no further burst starts).
    tbl_changed : In
        The grant table, mode or domain was written: the current page's translation is stale
        and is looked up again before the next burst (grant revocation, ``HV_SYNC``).
    burst_inflight, burst_done : Out
        A burst has been issued and not completed; it completes this cycle.
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH, disk_word_bits: int,
                 id_width: int = 4):
        self._data_width = check_data_width(data_width)
        lanes = data_width // 8
        self._disk_word_bits = disk_word_bits
        super().__init__({
            "handle_mode": In(1),
            "abort": In(1),
            "tbl_changed": In(1),
            "burst_inflight": Out(1),
            "burst_done": Out(1),
            "cmd_valid": In(1), "cmd_ready": Out(1), "cmd_write": In(1),
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
        dpos = Signal(32)
        page = Signal(52)  # physical page number of the current page (handle mode)
        fault = Signal(4)
        fault_addr = Signal(64)
        # Current burst
        b_addr = Signal(64)
        b_n = Signal(range(B + 1))
        b_err = Signal()

        m.d.comb += [
            axi.awid.eq(0), axi.arid.eq(0),
            axi.awburst.eq(BURST_INCR), axi.arburst.eq(BURST_INCR),
            axi.awsize.eq(lw), axi.arsize.eq(lw),
            axi.awcache.eq(0b0011), axi.arcache.eq(0b0011),
            axi.awprot.eq(0b010), axi.arprot.eq(0b010),
            axi.awlock.eq(0), axi.arlock.eq(0),
            axi.awaddr.eq(b_addr), axi.araddr.eq(b_addr),
            self.fault.eq(fault), self.fault_addr.eq(fault_addr),
            self.xl_req_vaddr.eq(cur), self.xl_req_write.eq(write),
        ]

        # Burst geometry, from the command state (used in state ADDR).
        n_next = Signal(range(B + 1))
        room = Signal(range(B + 1))
        m.d.comb += room.eq(B - cur[:lb])
        m.d.comb += n_next.eq(Mux(rem < room, rem, room))
        paddr_next = Signal(64)
        m.d.comb += paddr_next.eq(Mux(mode, Cat(cur[:spec.PAGE_SHIFT], page), cur))
        beats_m1 = Signal(8)
        m.d.comb += beats_m1.eq((paddr_next[:lw] + n_next - 1) >> lw)
        arlen = Signal(8)
        m.d.comb += [axi.awlen.eq(arlen), axi.arlen.eq(arlen)]

        # ---- Read beats (R channel -> RAM disk or sbuf) ---------------------------------------
        r_lo = Signal(range(W))
        r_left = Signal(range(B + 1))
        r_dpos = Signal(32)
        r_nb = Signal(range(W + 1))
        m.d.comb += r_nb.eq(Mux(r_left < W - r_lo, r_left, W - r_lo))
        r_take = Signal()  # a good beat is delivered this cycle
        d0 = Signal(lw) if lw else Const(0)
        m.d.comb += d0.eq(r_dpos[:lw])
        rot = Signal(lw)
        m.d.comb += rot.eq(d0 - r_lo)
        lanes = Signal(range(W + 1))
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
        del lanes
        m.d.comb += [
            self.disk_wr_word.eq(r_dpos[lw:]),
            self.disk_wr_data.eq(_rotl_bytes(axi.rdata, rot, W)),
        ]
        with m.If(r_take & to_disk):
            m.d.comb += [self.disk_wr_en_lo.eq(en_lo), self.disk_wr_en_hi.eq(en_hi)]
        sb_shift = Signal(range(SBUF_BYTES))
        for k in range(SBUF_BYTES):
            idx = Signal(range(SBUF_BYTES), name=f"sb_idx{k}")
            m.d.comb += idx.eq(k - r_dpos[:5] + r_lo)
            lane_sel = Signal(8, name=f"sb_lane{k}")
            m.d.comb += lane_sel.eq(axi.rdata.word_select(idx[:lw] if lw else 0, 8))
            m.d.comb += self.sbuf_wdata[8 * k:8 * k + 8].eq(lane_sel)
            in_run = Signal(name=f"sb_in{k}")
            m.d.comb += in_run.eq((k >= r_dpos) & (k < r_dpos + r_nb))
            with m.If(r_take & ~to_disk):
                m.d.comb += self.sbuf_we[k].eq(in_run)
        del sb_shift

        # ---- Write beats (RAM disk or sbuf -> W channel) ---------------------------------------
        # S0 issues a disk read for the next beat; S1 rotates the data into memory lanes and
        # pushes the beat into a small FIFO that feeds the W channel.
        FIFO_DEPTH = 4
        m.submodules.wfifo = wfifo = SyncFIFO(width=8 * W + W + 1, depth=FIFO_DEPTH)
        w_active = Signal()
        w_lo = Signal(range(W))
        w_left = Signal(range(B + 1))
        w_dpos = Signal(32)
        w_nb = Signal(range(W + 1))
        m.d.comb += w_nb.eq(Mux(w_left < W - w_lo, w_left, W - w_lo))
        s1_valid = Signal()
        s1_lo = Signal(range(W))
        s1_nb = Signal(range(W + 1))
        s1_dpos = Signal(32)
        s1_last = Signal()
        issue = Signal()
        m.d.comb += issue.eq(w_active & (wfifo.level + s1_valid < FIFO_DEPTH))
        m.d.comb += self.disk_rd_word.eq(w_dpos[lw:])
        m.d.sync += s1_valid.eq(issue)
        with m.If(issue):
            m.d.sync += [
                s1_lo.eq(w_lo), s1_nb.eq(w_nb), s1_dpos.eq(w_dpos),
                s1_last.eq(w_left == w_nb),
                w_dpos.eq(w_dpos + w_nb), w_left.eq(w_left - w_nb), w_lo.eq(0),
                w_active.eq(w_left != w_nb),
            ]
        s1_d0 = Signal(lw) if lw else Const(0)
        m.d.comb += s1_d0.eq(s1_dpos[:lw])
        combined = Signal(8 * W)
        for lane in range(W):
            m.d.comb += combined[8 * lane:8 * lane + 8].eq(
                Mux(lane >= s1_d0, self.disk_rd_lo[8 * lane:8 * lane + 8],
                    self.disk_rd_hi[8 * lane:8 * lane + 8]))
        s1_rot = Signal(lw)
        m.d.comb += s1_rot.eq(s1_d0 - s1_lo)
        s1_data = Signal(8 * W)
        sb_rot = Signal(5)
        m.d.comb += sb_rot.eq(s1_dpos[:5] - s1_lo)
        with m.If(to_disk):
            m.d.comb += s1_data.eq(_rotr_bytes(combined, s1_rot, W))
        with m.Else():
            m.d.comb += s1_data.eq(_rotr_bytes(self.sbuf, sb_rot, SBUF_BYTES)[:8 * W])
        s1_strb = Signal(W)
        for lane in range(W):
            m.d.comb += s1_strb[lane].eq((lane >= s1_lo) & (lane < s1_lo + s1_nb))
        m.d.comb += [
            wfifo.w_en.eq(s1_valid),
            wfifo.w_data.eq(Cat(s1_data, s1_strb, s1_last)),
            axi.wvalid.eq(wfifo.r_rdy),
            axi.wdata.eq(wfifo.r_data[:8 * W]),
            axi.wstrb.eq(wfifo.r_data[8 * W:9 * W]),
            axi.wlast.eq(wfifo.r_data[9 * W]),
            wfifo.r_en.eq(axi.wready),
        ]

        # ---- Control ----------------------------------------------------------------------------
        stale = Signal()
        with m.If(self.tbl_changed):
            m.d.sync += stale.eq(1)

        def finish_burst():
            """After the last beat or the write response of the current burst."""
            m.d.sync += [cur.eq(cur + b_n), rem.eq(rem - b_n), dpos.eq(dpos + b_n)]
            with m.If(b_err):
                m.d.sync += [fault.eq(spec.FAULT_BUS_ERROR), fault_addr.eq(b_addr)]
                m.next = "DONE"
            with m.Elif((rem == b_n) | self.abort):
                m.next = "DONE"
            with m.Elif(mode & (((cur + b_n)[:spec.PAGE_SHIFT] == 0) | stale
                                | self.tbl_changed)):
                m.next = "XLATE"
            with m.Else():
                m.next = "ADDR"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd_ready.eq(1)
                with m.If(self.cmd_valid):
                    m.d.sync += [
                        write.eq(self.cmd_write), to_disk.eq(self.cmd_disk),
                        mode.eq(self.handle_mode), cur.eq(self.cmd_vaddr),
                        rem.eq(self.cmd_len), dpos.eq(self.cmd_dpos), fault.eq(0),
                    ]
                    with m.If(self.cmd_len == 0):
                        m.next = "DONE"
                    with m.Elif(self.handle_mode):
                        m.next = "XLATE"
                    with m.Else():
                        m.next = "ADDR"
            with m.State("XLATE"):
                m.d.comb += [self.busy.eq(1), self.xl_req_valid.eq(1)]
                m.d.sync += stale.eq(self.tbl_changed)  # the lookup reads the table as of now
                m.next = "XCHECK"
                with m.If(self.abort):
                    m.next = "DONE"
            with m.State("XCHECK"):
                m.d.comb += [self.busy.eq(1), self.xlate.eq(1)]
                with m.If(self.xl_resp_fault != 0):
                    m.d.sync += [fault.eq(self.xl_resp_fault), fault_addr.eq(cur)]
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += page.eq(self.xl_resp_paddr[spec.PAGE_SHIFT:])
                    m.next = "ADDR"
            with m.State("ADDR"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [b_addr.eq(paddr_next), b_n.eq(n_next), arlen.eq(beats_m1),
                             b_err.eq(0)]
                with m.If(mode & (stale | self.tbl_changed)):
                    m.next = "XLATE"  # the table changed since this page was translated
                with m.Elif(write):
                    m.d.sync += [w_active.eq(1), w_lo.eq(paddr_next[:lw]), w_left.eq(n_next),
                                 w_dpos.eq(dpos)]
                    m.next = "WADDR"
                with m.Else():
                    m.d.sync += [r_lo.eq(paddr_next[:lw]), r_left.eq(n_next), r_dpos.eq(dpos)]
                    m.next = "RADDR"
            with m.State("RADDR"):
                m.d.comb += [self.busy.eq(1), axi.arvalid.eq(1), self.burst_inflight.eq(1)]
                with m.If(axi.arready):
                    m.next = "RDATA"
            with m.State("RDATA"):
                m.d.comb += [self.busy.eq(1), axi.rready.eq(1), self.burst_inflight.eq(1),
                             self.burst_done.eq(axi.rvalid & axi.rlast)]
                with m.If(axi.rvalid):
                    ok = axi.rresp == RESP_OKAY
                    m.d.comb += r_take.eq(ok & ~b_err)
                    m.d.sync += [r_lo.eq(0), r_left.eq(r_left - r_nb), r_dpos.eq(r_dpos + r_nb)]
                    with m.If(~ok):
                        m.d.sync += b_err.eq(1)
                    with m.If(axi.rlast):
                        with m.If(~ok):
                            m.d.sync += [fault.eq(spec.FAULT_BUS_ERROR), fault_addr.eq(b_addr)]
                            m.d.sync += [cur.eq(cur + b_n), rem.eq(rem - b_n)]
                            m.next = "DONE"
                        with m.Else():
                            finish_burst()
            with m.State("WADDR"):
                m.d.comb += [self.busy.eq(1), axi.awvalid.eq(1), self.burst_inflight.eq(1)]
                with m.If(axi.awready):
                    m.next = "WRESP"
            with m.State("WRESP"):
                m.d.comb += [self.busy.eq(1), axi.bready.eq(1), self.burst_inflight.eq(1),
                             self.burst_done.eq(axi.bvalid)]
                with m.If(axi.bvalid):
                    with m.If(axi.bresp != RESP_OKAY):
                        m.d.sync += [fault.eq(spec.FAULT_BUS_ERROR), fault_addr.eq(b_addr)]
                        m.next = "DONE"
                    with m.Else():
                        finish_burst()
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        return m
