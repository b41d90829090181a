"""Privileged register file (``s_hv``): mode, domain, fault registers and the grant table.

The map is an external contract (``docs/architecture.md``, "Privileged register file"), declared
in :data:`models.regmap.HV`: the read multiplexer is generated from it, the decode is by its
register names. Nothing on the guest port reaches these registers.

How the read path is built, for area (the behaviour does not depend on it): in the ``r_en``
cycle the offset is decoded, and each readable register is copied into a register of its own
that a flip-flop's synchronous reset clears unless the register is the one addressed; in the
next cycle ``r_data`` is the OR of those copies, or the table word. Gating by the flip-flops'
reset costs no LUT, and no data bit of the read multiplexer then depends on the address bits
(the delay-driven LUT mapping would otherwise fold the decode into each of the 32 bits). The
copies are flip-flops only; what is left in LUTs is an OR of five to seven copies per bit and
one LUT per bit that lets the table word (late, out of a block RAM) through.
"""

from __future__ import annotations

import functools
import operator

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec
from models.regmap import HV, Access

from .interfaces import IotlbCtrlSignature, StatusSignature, TableSignature
from .regbus import RegBusSignature

__all__ = ["PrivilegedRegs", "hv_addr_width"]


def hv_addr_width(entries: int) -> int:
    """Address bits of the privileged port: the registers plus ``GRANT[entries - 1]``."""
    return ceil_log2(spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries)


class PrivilegedRegs(wiring.Component):
    """Hypervisor registers.

    A write takes effect at the end of its ``w_en`` cycle; a read presents ``r_data`` in the
    cycle after ``r_en``, with the registers' values of the ``r_en`` cycle; a table word a
    cycle later (``r_wait`` in the cycle after ``r_en``), as the table held it at the end of
    the ``r_en`` cycle (``tbl_rdata`` in the cycle after, registered). Accesses come one
    at a time (:class:`~rtl.regbus.RegBusSignature`). Offsets decode :func:`hv_addr_width` bits
    (bits 1:0 ignored); unmapped offsets read 0 and ignore writes; grant words honour
    ``w_strb``, the registers ignore it.

    Parameters
    ----------
    entries : int
        Grant table entries.

    Members
    -------
    bus : In(RegBusSignature)
        From the ``s_hv`` bridge.
    table : Out(:func:`~rtl.interfaces.TableSignature`)
        To the translation unit: ``handle_mode``, ``domid`` (HV_CTRL bit 0, HV_DOMID);
        ``cfg_changed``, a write to the mode or the domain in a ``w_en`` cycle; ``addr``,
        ``wdata``, ``wen``: the entry of the access (the entry of ``bus.addr`` in every cycle),
        both words of the write data, byte enables (bytes 0-3: GRANT word 0, bytes 4-7: word 1)
        in a ``w_en`` cycle to a table word; ``rdata``, the entry at ``addr`` one cycle earlier.
    status : In(:func:`~rtl.interfaces.StatusSignature`)
        ``engine.fault``, ``engine.fault_cause``, ``dma.fault_addr``: a one-cycle pulse per
        fault; the first one is latched until software clears HV_FAULT_STATUS (a fault in the
        cycle of that write is latched). ``dma.xlate``, ``engine.completed``: statistics
        pulses (HV_STAT_XLATE, HV_STAT_REQUESTS). ``dma.inflight``, ``dma.burst_done``: bus
        transactions in flight (their translations predate anything written now); one
        completes this cycle (completions come in issue order). They complete an HV_SYNC
        barrier.
    tbl_changed, tbl_ref : Out
        In a ``w_en`` cycle: a write to grant entry ``tbl_ref``. The DMA engine looks a page up
        again before its next burst if its translation may have changed.
    """

    def __init__(self, *, entries: int = spec.DEFAULT_ENTRIES, iotlb_entries: int = 0):
        self._entries = entries
        self._iotlb_entries = iotlb_entries
        self._addr_width = hv_addr_width(entries)
        self._ref_bits = max(1, ceil_log2(entries))
        members = {
            "bus": In(RegBusSignature(self._addr_width)),
            "table": Out(TableSignature(self._ref_bits)),
            "status": In(StatusSignature()),
            "tbl_changed": Out(1),
            "tbl_ref": Out(self._ref_bits),
        }
        if iotlb_entries:
            members["iotlb"] = Out(IotlbCtrlSignature())
        super().__init__(members)

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def elaborate(self, platform):
        m = Module()
        bus, tb, st = self.bus, self.table, self.status
        data = bus.w_data

        # Register offsets: the address bits above the registers all 0 (one term shared by
        # every register), and bits 6:2 (7:2 with the IOTLB's registers).
        top = 8 if self._iotlb_entries else 7
        registers = Signal()
        m.d.comb += registers.eq(bus.addr[top:] == 0)

        def at(name):
            """The access is to register ``name`` of :data:`models.regmap.HV` (bits 1:0
            ignored)."""
            offset = HV[name].offset
            assert offset < 1 << top
            return registers & (bus.addr[2:top] == offset >> 2)

        handle_mode = Signal()
        domid = Signal(16)
        fault_status = Signal()
        fault_cause = Signal(4)
        fault_addr = Signal(64)
        fault_count = Signal(32)
        stat_xlate = Signal(32)
        stat_requests = Signal(32)
        m.d.comb += [tb.handle_mode.eq(handle_mode), tb.domid.eq(domid)]

        # --- Grant table: GRANT[ref] at HV_GRANT_BASE + 8 * ref, word 1 (bytes 4-7) at +4.
        offset = Cat(Signal(2), bus.addr[2:])
        in_table = Signal()
        ref = Signal(self._addr_width)
        m.d.comb += [
            in_table.eq((offset >= spec.HV_GRANT_BASE)
                        & (offset < spec.HV_GRANT_BASE
                           + spec.GRANT_ENTRY_BYTES * self._entries)),
            ref.eq((offset - spec.HV_GRANT_BASE) >> 3),
            tb.addr.eq(ref),
            self.tbl_ref.eq(ref),
            tb.wdata.eq(Cat(data, data)),
            self.tbl_changed.eq(bus.w_en & in_table),
        ]
        with m.If(bus.w_en & in_table):
            m.d.comb += tb.wen.eq(Mux(offset[2], bus.w_strb << 4, bus.w_strb))

        # --- Mode and domain.
        mode = handle_mode
        if self._iotlb_entries:  # HV_CTRL bits 1:0; a write of 3 leaves the mode unchanged
            mode = Signal(2)
            with m.If(bus.w_en & at("HV_CTRL") & (data[:2] != 3)):
                m.d.sync += mode.eq(data[:2])
            m.d.comb += [handle_mode.eq(mode == spec.MODE_GRANT),
                         self.iotlb.iova_mode.eq(mode == spec.MODE_IOVA)]
        else:  # no IOTLB: modes 0 and 1 only
            with m.If(bus.w_en & at("HV_CTRL") & ~data[1]):
                m.d.sync += handle_mode.eq(data[0])
        with m.If(bus.w_en & at("HV_DOMID")):
            m.d.sync += domid.eq(data[:16])
        m.d.comb += tb.cfg_changed.eq(bus.w_en & (at("HV_CTRL") | at("HV_DOMID")))

        # --- HV_SYNC: a write starts a barrier that waits for the transactions in flight at
        # that moment (completions come in issue order, so counting them down is enough; the
        # DMA engine translates again before any burst issued after a table change).
        sync_count = Signal(range(16))
        with m.If(st.dma.burst_done & (sync_count != 0)):
            m.d.sync += sync_count.eq(sync_count - 1)
        with m.If(bus.w_en & at("HV_SYNC")):
            m.d.sync += sync_count.eq(st.dma.inflight - st.dma.burst_done)
        synced = sync_count == 0

        # --- IOTLB (docs/iotlb.md): the staged mapping, the commands, the miss's resolution.
        iotlb_values = {}
        if self._iotlb_entries:
            io = self.iotlb
            stage_iova = Signal(64)
            stage_pa = Signal(64)
            attr = Signal(10)
            for name, reg, lo in (("IOTLB_IOVA_LO", stage_iova, 0),
                                  ("IOTLB_IOVA_HI", stage_iova, 32),
                                  ("IOTLB_PA_LO", stage_pa, 0), ("IOTLB_PA_HI", stage_pa, 32)):
                with m.If(bus.w_en & at(name)):
                    m.d.sync += reg[lo:lo + 32].eq(data)
            with m.If(bus.w_en & at("IOTLB_ATTR")):
                m.d.sync += attr.eq(data[:10])
            one_of_three = data[2:] == 0  # (IOTLB_CMD and MISS_RESOLVE take 1 to 3)
            m.d.comb += [
                io.cmd.stage_iova.eq(stage_iova), io.cmd.stage_pa.eq(stage_pa),
                io.cmd.stage_size.eq(attr[:6]), io.cmd.stage_r.eq(attr[8]),
                io.cmd.stage_w.eq(attr[9]),
                io.cmd.cmd.eq(Mux(bus.w_en & at("IOTLB_CMD") & one_of_three, data[:2], 0)),
                io.resolve.eq(Mux(bus.w_en & at("MISS_RESOLVE") & one_of_three, data[:2], 0)),
                # a command runs: writes wait (the s_hv bridge does not take one)
                bus.w_hold.eq(io.cmd.busy),
            ]
            synced = synced & ~io.cmd.busy
            iotlb_values = {
                "IOTLB_IOVA_LO": stage_iova[:32], "IOTLB_IOVA_HI": stage_iova[32:],
                "IOTLB_PA_LO": stage_pa[:32], "IOTLB_PA_HI": stage_pa[32:], "IOTLB_ATTR": attr,
                "IOTLB_MISS": Cat(io.miss, io.miss & ~io.miss_write, io.miss & io.miss_write),
                "MISS_IOVA_LO": io.miss_iova[:32], "MISS_IOVA_HI": io.miss_iova[32:],
                "STAT_IOTLB_HITS": io.hits, "STAT_IOTLB_MISSES": io.misses,
                "STAT_IOTLB_INVALIDATED": io.cmd.invalidated,
            }

        # --- Statistics.
        with m.If(st.dma.xlate):
            m.d.sync += stat_xlate.eq(stat_xlate + 1)
        with m.If(st.engine.completed):
            m.d.sync += stat_requests.eq(stat_requests + 1)

        # --- Faults: every one counts; the first is latched until HV_FAULT_STATUS bit 0 is
        # written with 1 (RW1C). A fault in the cycle of that write is latched.
        clear = Signal()
        m.d.comb += clear.eq(bus.w_en & at("HV_FAULT_STATUS") & data[0])
        latch = Signal()
        m.d.comb += latch.eq(st.engine.fault & (~fault_status | clear))
        with m.If(st.engine.fault):
            m.d.sync += fault_count.eq(fault_count + 1)
        with m.If(latch):
            m.d.sync += [fault_cause.eq(st.engine.fault_cause), fault_addr.eq(st.dma.fault_addr)]
        with m.If(clear & ~st.engine.fault):
            m.d.sync += fault_status.eq(0)
        with m.Elif(st.engine.fault):
            m.d.sync += fault_status.eq(1)

        # --- Reads: one cycle of latency. In the r_en cycle every readable register is copied
        # into a register of its own, cleared unless it is the one addressed (see the module
        # docstring); in the next cycle ``word`` is the OR of the copies.
        values = {  # what each register reads that is not its reset value (models.regmap)
            "HV_CTRL": mode, "HV_DOMID": domid, "HV_FAULT_STATUS": fault_status,
            "HV_FAULT_CAUSE": fault_cause, "HV_FAULT_ADDR_LO": fault_addr[:32],
            "HV_FAULT_ADDR_HI": fault_addr[32:], "HV_FAULT_COUNT": fault_count,
            "HV_SYNC": synced, "HV_STAT_XLATE": stat_xlate,
            "HV_STAT_REQUESTS": stat_requests, **iotlb_values,
        }
        bits = [[] for _ in range(32)]  # per bit of r_data: the copies that can set it
        flags = []  # the one-bit registers share one copy (r_flags), so that bit 0 is not an
        # OR of many more copies than the other bits
        for reg in HV:
            if reg.count or reg.access is Access.WO:
                continue  # the grant table is read below; a WO register reads 0
            if reg.offset >= 1 << top:
                continue  # (no IOTLB: its registers read 0)
            value = values.get(reg.name, HV.resets(reg, {"entries": self._entries,
                                                         "iotlb_entries": self._iotlb_entries})[0])
            if reg.width == 1:
                flags.append(at(reg.name) & value)
            elif isinstance(value, int):
                copy = Signal(name=f"r_at_{reg.offset:03x}", reset_less=True)
                with m.If(bus.r_en):
                    m.d.sync += copy.eq(at(reg.name))
                for bit in range(32):
                    if value >> bit & 1:
                        bits[bit].append(copy)
            else:
                copy = Signal.like(value, name=f"r_copy_{reg.offset:03x}", reset_less=True)
                with m.If(bus.r_en):
                    m.d.sync += copy.eq(Mux(at(reg.name), value, 0))
                for bit in range(len(copy)):
                    bits[bit].append(copy[bit])
        r_flags = Signal(reset_less=True)
        with m.If(bus.r_en):
            m.d.sync += r_flags.eq(functools.reduce(operator.or_, flags))
        bits[0].append(r_flags)

        # A table word comes from the translation unit's block RAM in the cycle after r_en
        # (clock to output about 5.6 ns on an ECP5). Fmax: it is registered as it comes
        # (``tbl_q``, no LUT before it and no reset: on an ECP5 the block RAM's output
        # register, rtl/board/outreg.py; the route from the block RAM to the bridge's register
        # was the worst path of four seeds of ten at a7b226c), and the bridge takes r_data a
        # cycle later (``r_wait``); the register copies hold. Then
        # one LUT to the bridge's register: r_data is ``word`` for a register read and, for a
        # table read, word 1 of the entry if ``word`` is set (``word`` is then r_table_hi,
        # every copy being 0), else word 0: one LUT4 of (r_table, word, word 0, word 1) per
        # bit. ``keep`` holds ``word`` apart so that synthesis does not merge the table's data
        # into the OR of the copies.
        r_table = Signal(reset_less=True)
        r_table_hi = Signal(reset_less=True)
        with m.If(bus.r_en):
            m.d.sync += [r_table.eq(in_table), r_table_hi.eq(in_table & offset[2])]
        word = Signal(32, attrs={"keep": 1})
        for bit in range(32):
            m.d.comb += word[bit].eq(Cat(*bits[bit], r_table_hi).any())
        tbl_q = Signal(64, reset_less=True)
        m.d.sync += tbl_q.eq(tb.rdata)
        entry = [tbl_q.word_select(n, 32) for n in range(2)]
        m.d.comb += [bus.r_data.eq(Mux(r_table, (entry[1] & word) | (entry[0] & ~word), word)),
                     bus.r_wait.eq(r_table)]
        return m
