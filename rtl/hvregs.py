"""Privileged register file (``s_hv``): mode, domain, fault registers and the grant table.

The map is an external contract (``docs/architecture.md``, "Privileged register file"). Nothing
on the guest port reaches these registers.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec

from .regbus import RegBusSignature

__all__ = ["PrivilegedRegs", "hv_addr_width"]


def hv_addr_width(entries: int) -> int:
    """Address bits of the privileged port: the registers plus ``GRANT[entries - 1]``."""
    return ceil_log2(spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries)


class PrivilegedRegs(wiring.Component):
    """Hypervisor registers.

    Members
    -------
    bus : In(RegBusSignature)
        From the ``s_hv`` bridge.
    handle_mode, domid : Out
        Translation configuration.
    tbl_* :
        Access to the translation unit's table (read data one cycle after the address).
    fault, fault_cause, fault_addr : In
        A one-cycle pulse per fault; the first one is latched until software clears
        HV_FAULT_STATUS.
    xlate, completed : In
        Statistics pulses.
    inflight, burst_done : In
        Bus transactions in flight (their translations predate anything written now); one
        completes this cycle (completions come in issue order). They complete an HV_SYNC
        barrier.
    tbl_changed, tbl_ref, cfg_changed : Out
        A write to grant entry ``tbl_ref``; a write to the mode or the domain. The DMA engine
        looks a page up again before its next burst if its translation may have changed.
    """

    def __init__(self, *, entries: int = spec.DEFAULT_ENTRIES):
        self._entries = entries
        self._addr_width = hv_addr_width(entries)
        self._ref_bits = max(1, ceil_log2(entries))
        super().__init__({
            "bus": In(RegBusSignature(self._addr_width)),
            "handle_mode": Out(1),
            "domid": Out(16),
            "tbl_addr": Out(self._ref_bits),
            "tbl_wdata": Out(64),
            "tbl_wen": Out(8),
            "tbl_rdata": In(64),
            "fault": In(1),
            "fault_cause": In(4),
            "fault_addr": In(64),
            "xlate": In(1),
            "completed": In(1),
            "inflight": In(range(16)),
            "burst_done": In(1),
            "tbl_changed": Out(1),
            "tbl_ref": Out(self._ref_bits),
            "cfg_changed": Out(1),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        ctrl = Signal(32)
        domid = Signal(16)
        fault_status = Signal()
        fault_cause = Signal(4)
        fault_addr = Signal(64)
        fault_count = Signal(32)
        stat_xlate = Signal(32)
        stat_requests = Signal(32)
        m.d.comb += [self.handle_mode.eq(ctrl[0]), self.domid.eq(domid)]

        offset = Cat(Signal(2), bus.addr[2:])
        in_table = Signal()
        ref = Signal(self._addr_width)
        m.d.comb += [
            in_table.eq((offset >= spec.HV_GRANT_BASE)
                        & (offset < spec.HV_GRANT_BASE
                           + spec.GRANT_ENTRY_BYTES * self._entries)),
            ref.eq((offset - spec.HV_GRANT_BASE) >> 3),
            self.tbl_addr.eq(ref),
            self.tbl_wdata.eq(Cat(bus.w_data, bus.w_data)),
        ]
        with m.If(bus.w_en & in_table):
            with m.If(offset[2]):
                m.d.comb += self.tbl_wen.eq(Cat(0, 0, 0, 0, bus.w_strb))
            with m.Else():
                m.d.comb += self.tbl_wen.eq(bus.w_strb)

        # HV_SYNC: a write starts a barrier that waits for the transactions in flight at that
        # moment (completions come in issue order, so counting them down is enough; the DMA
        # engine translates again before any burst issued after a table change).
        sync_count = Signal(range(16))
        with m.If(self.burst_done & (sync_count != 0)):
            m.d.sync += sync_count.eq(sync_count - 1)
        with m.If(bus.w_en & (offset == spec.HV_SYNC)):
            m.d.sync += sync_count.eq(self.inflight - self.burst_done)
        sync_pending = Signal()
        m.d.comb += sync_pending.eq(sync_count != 0)
        m.d.comb += [
            self.tbl_changed.eq(bus.w_en & in_table),
            self.tbl_ref.eq(ref),
            self.cfg_changed.eq(bus.w_en & ((offset == spec.HV_CTRL)
                                            | (offset == spec.HV_DOMID))),
        ]

        with m.If(self.xlate):
            m.d.sync += stat_xlate.eq(stat_xlate + 1)
        with m.If(self.completed):
            m.d.sync += stat_requests.eq(stat_requests + 1)

        with m.If(bus.w_en), m.Switch(offset):
            with m.Case(spec.HV_CTRL):
                m.d.sync += ctrl.eq(bus.w_data & spec.HV_CTRL_HANDLE_MODE)
            with m.Case(spec.HV_DOMID):
                m.d.sync += domid.eq(bus.w_data[:16])
            with m.Case(spec.HV_FAULT_STATUS), m.If(bus.w_data[0]):
                m.d.sync += fault_status.eq(0)

        # A fault in the same cycle as the clearing write stays latched.
        with m.If(self.fault):
            m.d.sync += fault_count.eq(fault_count + 1)
            with m.If(~fault_status | (bus.w_en & (offset == spec.HV_FAULT_STATUS)
                                        & bus.w_data[0])):
                m.d.sync += [fault_status.eq(1), fault_cause.eq(self.fault_cause),
                             fault_addr.eq(self.fault_addr)]

        # Reads: registers are sampled on r_en; table words come from the block RAM a cycle
        # later.
        rdata = Signal(32)
        r_table = Signal()
        r_hi = Signal()
        with m.If(bus.r_en):
            m.d.sync += [r_table.eq(in_table), r_hi.eq(offset[2]), rdata.eq(0)]
            with m.Switch(offset):
                with m.Case(spec.HV_VERSION):
                    m.d.sync += rdata.eq(spec.HV_VERSION_VALUE)
                with m.Case(spec.HV_CTRL):
                    m.d.sync += rdata.eq(ctrl)
                with m.Case(spec.HV_DOMID):
                    m.d.sync += rdata.eq(domid)
                with m.Case(spec.HV_ENTRIES):
                    m.d.sync += rdata.eq(self._entries)
                with m.Case(spec.HV_FAULT_STATUS):
                    m.d.sync += rdata.eq(fault_status)
                with m.Case(spec.HV_FAULT_CAUSE):
                    m.d.sync += rdata.eq(fault_cause)
                with m.Case(spec.HV_FAULT_ADDR_LO):
                    m.d.sync += rdata.eq(fault_addr[:32])
                with m.Case(spec.HV_FAULT_ADDR_HI):
                    m.d.sync += rdata.eq(fault_addr[32:])
                with m.Case(spec.HV_FAULT_COUNT):
                    m.d.sync += rdata.eq(fault_count)
                with m.Case(spec.HV_SYNC):
                    m.d.sync += rdata.eq(~sync_pending)
                with m.Case(spec.HV_STAT_XLATE):
                    m.d.sync += rdata.eq(stat_xlate)
                with m.Case(spec.HV_STAT_REQUESTS):
                    m.d.sync += rdata.eq(stat_requests)
        with m.If(r_table):
            m.d.comb += bus.r_data.eq(self.tbl_rdata.word_select(r_hi, 32))
        with m.Else():
            m.d.comb += bus.r_data.eq(rdata)
        return m
