"""The register files as they were before their area reduction (commit 771d5aa), kept verbatim
(renamed) as the cycle-level behavioural reference of ``rtl/mmio.py`` and ``rtl/hvregs.py``:
``tests/test_rtl_registers.py`` runs each new register file in lock step with its reference
and compares every output in every cycle (``r_data`` in the cycle after ``r_en``, the only one
its contract defines).

Not part of the design; do not import it from ``rtl/``.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec
from rtl.hvregs import hv_addr_width
from rtl.interfaces import QueueSignature, StatusSignature, TableSignature
from rtl.mmio import MMIO_ADDR_WIDTH
from rtl.regbus import RegBusSignature

__all__ = ["ReferenceMmioRegs", "ReferencePrivilegedRegs"]


class ReferenceMmioRegs(wiring.Component):
    """Guest-visible registers.

    Parameters
    ----------
    queue_num_max : int
        QueueNumMax of queue 0.
    disk_bytes : int
        RAM disk size; ``capacity`` is this in 512-byte sectors.

    Members
    -------
    bus : In(RegBusSignature)
        From the ``s_axil`` bridge.
    handle_mode : In
        Decides whether VIRTIO_F_ACCESS_PLATFORM is offered and required.
    notify, dev_reset : Out
        One-cycle pulses: an accepted QueueNotify, a write of 0 to Status.
    engine_idle : In
        The ring engine is idle with no bus transaction in flight. A reset completes (the
        registers return to their reset values and Status reads 0) only then.
    used_irq, fault : In
        One-cycle pulses from the ring engine.
    """

    def __init__(self, *, queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES):
        self._queue_num_max = queue_num_max
        self._disk_bytes = disk_bytes
        super().__init__({
            "bus": In(RegBusSignature(MMIO_ADDR_WIDTH)),
            "handle_mode": In(1),
            "queue": Out(QueueSignature()),
            "status": Out(8),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus, q = self.bus, self.queue
        qmax = self._queue_num_max

        dev_features_sel = Signal(32)
        drv_features_sel = Signal(32)
        drv_features = Signal(64)
        queue_sel = Signal(32)
        queue_num = Signal(32, init=qmax)
        queue_ready = Signal()
        desc = Signal(64)
        avail = Signal(64)
        used = Signal(64)
        status = Signal(8)
        int_status = Signal(2)
        reset_pending = Signal()

        dev_features = Signal(64)
        m.d.comb += dev_features.eq(
            (1 << spec.VIRTIO_BLK_F_FLUSH) | (1 << spec.VIRTIO_F_VERSION_1)
            | (self.handle_mode << spec.VIRTIO_F_ACCESS_PLATFORM))
        features_ok = Signal()
        m.d.comb += features_ok.eq(
            ((drv_features & ~dev_features) == 0)
            & drv_features[spec.VIRTIO_F_VERSION_1]
            & (~self.handle_mode | drv_features[spec.VIRTIO_F_ACCESS_PLATFORM]))

        m.d.comb += [
            q.num.eq(queue_num), q.ready.eq(queue_ready),
            q.desc.eq(desc), q.avail.eq(avail), q.used.eq(used),
            self.status.eq(status), self.irq.eq(int_status != 0),
        ]

        q0 = queue_sel == 0
        offset = Cat(Signal(2), bus.addr[2:])  # word-aligned byte offset

        # Interrupt status: acknowledged bits clear, engine events set (set wins).
        int_ack = Signal(2)
        int_set = Signal(2)
        m.d.comb += int_set.eq(Cat(q.used_irq, q.fault))
        m.d.sync += int_status.eq((int_status & ~int_ack) | int_set)

        with m.If(q.fault):
            m.d.sync += status.eq(status | spec.STATUS_DEVICE_NEEDS_RESET)

        with m.If(bus.w_en):
            data = bus.w_data
            with m.Switch(offset):
                with m.Case(spec.MMIO_DEVICE_FEATURES_SEL):
                    m.d.sync += dev_features_sel.eq(data)
                with m.Case(spec.MMIO_DRIVER_FEATURES):
                    with m.If(drv_features_sel == 0):
                        m.d.sync += drv_features[:32].eq(data)
                    with m.Elif(drv_features_sel == 1):
                        m.d.sync += drv_features[32:].eq(data)
                with m.Case(spec.MMIO_DRIVER_FEATURES_SEL):
                    m.d.sync += drv_features_sel.eq(data)
                with m.Case(spec.MMIO_QUEUE_SEL):
                    m.d.sync += queue_sel.eq(data)
                with m.Case(spec.MMIO_QUEUE_NUM), m.If(q0):
                    m.d.sync += queue_num.eq(data)
                with m.Case(spec.MMIO_QUEUE_READY), m.If(q0):
                    m.d.sync += queue_ready.eq(data[0])
                with m.Case(spec.MMIO_QUEUE_NOTIFY):
                    m.d.comb += q.notify.eq(
                        (data == 0) & queue_ready & status[2])  # DRIVER_OK
                with m.Case(spec.MMIO_INTERRUPT_ACK):
                    m.d.comb += int_ack.eq(data[:2])
                with m.Case(spec.MMIO_STATUS):
                    with m.If(data == 0):
                        m.d.comb += q.dev_reset.eq(1)
                        m.d.sync += reset_pending.eq(1)
                    with m.Else():
                        new = Signal(8)
                        m.d.comb += new.eq(data[:8])
                        m.d.comb += new[6].eq(status[6] | q.fault)
                        with m.If(~features_ok):
                            m.d.comb += new[3].eq(0)
                        m.d.sync += status.eq(new)
                for reg_off, reg in ((spec.MMIO_QUEUE_DESC_LOW, desc),
                                     (spec.MMIO_QUEUE_DRIVER_LOW, avail),
                                     (spec.MMIO_QUEUE_DEVICE_LOW, used)):
                    with m.Case(reg_off), m.If(q0):
                        m.d.sync += reg[:32].eq(data)
                    with m.Case(reg_off + 4), m.If(q0):
                        m.d.sync += reg[32:].eq(data)

        # virtio 1.x section 2.1: the device presents 0 in Status once the reset is done, i.e.
        # once the engine has finished the burst it was in.
        with m.If(reset_pending & ~q.dev_reset & q.idle):
            m.d.sync += [
                reset_pending.eq(0),
                dev_features_sel.eq(0), drv_features_sel.eq(0), drv_features.eq(0),
                queue_sel.eq(0), queue_num.eq(qmax), queue_ready.eq(0),
                desc.eq(0), avail.eq(0), used.eq(0), status.eq(0), int_status.eq(0),
            ]

        # Reads: one cycle of latency.
        rdata = Signal(32)
        m.d.comb += bus.r_data.eq(rdata)
        capacity = self._disk_bytes // spec.SECTOR_SIZE
        with m.If(bus.r_en):
            m.d.sync += rdata.eq(0)
            with m.Switch(offset):
                with m.Case(spec.MMIO_MAGIC_VALUE):
                    m.d.sync += rdata.eq(spec.MAGIC_VALUE)
                with m.Case(spec.MMIO_VERSION):
                    m.d.sync += rdata.eq(spec.MMIO_VERSION_VALUE)
                with m.Case(spec.MMIO_DEVICE_ID):
                    m.d.sync += rdata.eq(spec.VIRTIO_ID_BLOCK)
                with m.Case(spec.MMIO_VENDOR_ID):
                    m.d.sync += rdata.eq(spec.VENDOR_ID)
                with m.Case(spec.MMIO_DEVICE_FEATURES):
                    with m.If(dev_features_sel == 0):
                        m.d.sync += rdata.eq(dev_features[:32])
                    with m.Elif(dev_features_sel == 1):
                        m.d.sync += rdata.eq(dev_features[32:])
                with m.Case(spec.MMIO_DEVICE_FEATURES_SEL):
                    m.d.sync += rdata.eq(dev_features_sel)
                with m.Case(spec.MMIO_DRIVER_FEATURES):
                    with m.If(drv_features_sel == 0):
                        m.d.sync += rdata.eq(drv_features[:32])
                    with m.Elif(drv_features_sel == 1):
                        m.d.sync += rdata.eq(drv_features[32:])
                with m.Case(spec.MMIO_DRIVER_FEATURES_SEL):
                    m.d.sync += rdata.eq(drv_features_sel)
                with m.Case(spec.MMIO_QUEUE_SEL):
                    m.d.sync += rdata.eq(queue_sel)
                with m.Case(spec.MMIO_QUEUE_NUM_MAX):
                    m.d.sync += rdata.eq(q0 * qmax)
                with m.Case(spec.MMIO_QUEUE_NUM):
                    m.d.sync += rdata.eq(q0 * queue_num)
                with m.Case(spec.MMIO_QUEUE_READY):
                    m.d.sync += rdata.eq(q0 & queue_ready)
                with m.Case(spec.MMIO_INTERRUPT_STATUS):
                    m.d.sync += rdata.eq(int_status)
                with m.Case(spec.MMIO_STATUS):
                    m.d.sync += rdata.eq(status)
                for reg_off, reg in ((spec.MMIO_QUEUE_DESC_LOW, desc),
                                     (spec.MMIO_QUEUE_DRIVER_LOW, avail),
                                     (spec.MMIO_QUEUE_DEVICE_LOW, used)):
                    with m.Case(reg_off):
                        m.d.sync += rdata.eq(q0 * reg[:32])
                    with m.Case(reg_off + 4):
                        m.d.sync += rdata.eq(q0 * reg[32:])
                with m.Case(spec.MMIO_CONFIG_GENERATION):
                    m.d.sync += rdata.eq(0)
                with m.Case(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY):
                    m.d.sync += rdata.eq(capacity & 0xFFFF_FFFF)
                with m.Case(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY + 4):
                    m.d.sync += rdata.eq(capacity >> 32)
        return m


class ReferencePrivilegedRegs(wiring.Component):
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
            "table": Out(TableSignature(self._ref_bits)),
            "status": In(StatusSignature()),
            "tbl_changed": Out(1),
            "tbl_ref": Out(self._ref_bits),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def elaborate(self, platform):
        m = Module()
        bus, tb, st = self.bus, self.table, self.status

        ctrl = Signal(32)
        domid = Signal(16)
        fault_status = Signal()
        fault_cause = Signal(4)
        fault_addr = Signal(64)
        fault_count = Signal(32)
        stat_xlate = Signal(32)
        stat_requests = Signal(32)
        m.d.comb += [tb.handle_mode.eq(ctrl[0]), tb.domid.eq(domid)]

        offset = Cat(Signal(2), bus.addr[2:])
        in_table = Signal()
        ref = Signal(self._addr_width)
        m.d.comb += [
            in_table.eq((offset >= spec.HV_GRANT_BASE)
                        & (offset < spec.HV_GRANT_BASE
                           + spec.GRANT_ENTRY_BYTES * self._entries)),
            ref.eq((offset - spec.HV_GRANT_BASE) >> 3),
            tb.addr.eq(ref),
            tb.wdata.eq(Cat(bus.w_data, bus.w_data)),
        ]
        with m.If(bus.w_en & in_table):
            with m.If(offset[2]):
                m.d.comb += tb.wen.eq(Cat(0, 0, 0, 0, bus.w_strb))
            with m.Else():
                m.d.comb += tb.wen.eq(bus.w_strb)

        # HV_SYNC: a write starts a barrier that waits for the transactions in flight at that
        # moment (completions come in issue order, so counting them down is enough; the DMA
        # engine translates again before any burst issued after a table change).
        sync_count = Signal(range(16))
        with m.If(st.dma.burst_done & (sync_count != 0)):
            m.d.sync += sync_count.eq(sync_count - 1)
        with m.If(bus.w_en & (offset == spec.HV_SYNC)):
            m.d.sync += sync_count.eq(st.dma.inflight - st.dma.burst_done)
        sync_pending = Signal()
        m.d.comb += sync_pending.eq(sync_count != 0)
        m.d.comb += [
            self.tbl_changed.eq(bus.w_en & in_table),
            self.tbl_ref.eq(ref),
            tb.cfg_changed.eq(bus.w_en & ((offset == spec.HV_CTRL)
                                            | (offset == spec.HV_DOMID))),
        ]

        with m.If(st.dma.xlate):
            m.d.sync += stat_xlate.eq(stat_xlate + 1)
        with m.If(st.engine.completed):
            m.d.sync += stat_requests.eq(stat_requests + 1)

        with m.If(bus.w_en), m.Switch(offset):
            with m.Case(spec.HV_CTRL):
                m.d.sync += ctrl.eq(bus.w_data & spec.HV_CTRL_HANDLE_MODE)
            with m.Case(spec.HV_DOMID):
                m.d.sync += domid.eq(bus.w_data[:16])
            with m.Case(spec.HV_FAULT_STATUS), m.If(bus.w_data[0]):
                m.d.sync += fault_status.eq(0)

        # A fault in the same cycle as the clearing write stays latched.
        with m.If(st.engine.fault):
            m.d.sync += fault_count.eq(fault_count + 1)
            with m.If(~fault_status | (bus.w_en & (offset == spec.HV_FAULT_STATUS)
                                        & bus.w_data[0])):
                m.d.sync += [fault_status.eq(1), fault_cause.eq(st.engine.fault_cause),
                             fault_addr.eq(st.dma.fault_addr)]

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
            m.d.comb += bus.r_data.eq(tb.rdata.word_select(r_hi, 32))
        with m.Else():
            m.d.comb += bus.r_data.eq(rdata)
        return m
