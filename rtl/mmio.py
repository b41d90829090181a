"""virtio-mmio version 2 register file (virtio 1.x section 4.2.2) for one virtio-blk queue.

Behaviour, reset values and the FEATURES_OK rule are those of ``docs/architecture.md``
("virtio-mmio register file").
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models import spec

from .regbus import RegBusSignature

__all__ = ["MMIO_ADDR_WIDTH", "VirtioMmioRegs"]

MMIO_ADDR_WIDTH = 9  # 0x000-0x1FF: common registers and the device configuration space


class VirtioMmioRegs(wiring.Component):
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
            "queue_num": Out(32),
            "queue_ready": Out(1),
            "queue_desc": Out(64),
            "queue_avail": Out(64),
            "queue_used": Out(64),
            "status": Out(8),
            "notify": Out(1),
            "dev_reset": Out(1),
            "used_irq": In(1),
            "fault": In(1),
            "engine_idle": In(1),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
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
            self.queue_num.eq(queue_num), self.queue_ready.eq(queue_ready),
            self.queue_desc.eq(desc), self.queue_avail.eq(avail), self.queue_used.eq(used),
            self.status.eq(status), self.irq.eq(int_status != 0),
        ]

        q0 = queue_sel == 0
        offset = Cat(Signal(2), bus.addr[2:])  # word-aligned byte offset

        # Interrupt status: acknowledged bits clear, engine events set (set wins).
        int_ack = Signal(2)
        int_set = Signal(2)
        m.d.comb += int_set.eq(Cat(self.used_irq, self.fault))
        m.d.sync += int_status.eq((int_status & ~int_ack) | int_set)

        with m.If(self.fault):
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
                    m.d.comb += self.notify.eq(
                        (data == 0) & queue_ready & status[2])  # DRIVER_OK
                with m.Case(spec.MMIO_INTERRUPT_ACK):
                    m.d.comb += int_ack.eq(data[:2])
                with m.Case(spec.MMIO_STATUS):
                    with m.If(data == 0):
                        m.d.comb += self.dev_reset.eq(1)
                        m.d.sync += reset_pending.eq(1)
                    with m.Else():
                        new = Signal(8)
                        m.d.comb += new.eq(data[:8])
                        m.d.comb += new[6].eq(status[6] | self.fault)
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
        with m.If(reset_pending & ~self.dev_reset & self.engine_idle):
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
