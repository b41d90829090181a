"""Top level: ``virtio_blk_handle``, the handle-addressed virtio-blk device.

Ports (an external contract, docs/architecture.md and README "Integrating the Verilog"):
``clk``, ``rst`` (synchronous, active high), ``irq``, the guest register port ``s_axil``
(AXI4-Lite), the privileged port ``s_hv`` (AXI4-Lite) and the DMA port ``m_axi`` (AXI4, 64-bit
addresses). In Verilog the AXI members are flattened to ``s_axil__awaddr`` etc.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models import spec

from .axi import AXI4LiteSignature, AXI4Signature
from .dma import DmaEngine
from .engine import RingEngine
from .hvregs import PrivilegedRegs, hv_addr_width
from .mmio import MMIO_ADDR_WIDTH, VirtioMmioRegs
from .params import check_data_width, check_disk_bytes, check_entries, check_queue_num_max
from .ramdisk import RamDisk
from .regbus import AXI4LiteRegBridge
from .translate import PassThroughUnit, TranslationUnit

__all__ = ["VirtioBlkHandle"]


class VirtioBlkHandle(wiring.Component):
    """The whole device.

    Parameters
    ----------
    data_width : int
        ``m_axi`` data width: 32, 64 (default) or 128.
    entries : int
        Grant table entries (default 1024).
    queue_num_max : int
        QueueNumMax (default 256), a power of two.
    disk_bytes : int
        RAM disk size in bytes (default 64 KiB).
    translation : bool
        ``True`` (default): the device. ``False``: the GPA-only device, for comparison: the
        grant table and its checks are left out, the device always uses guest-physical
        addresses whatever HV_CTRL says, and table entries read 0.
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH,
                 entries: int = spec.DEFAULT_ENTRIES,
                 queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES, translation: bool = True):
        self.data_width = check_data_width(data_width)
        self.entries = check_entries(entries)
        self.queue_num_max = check_queue_num_max(queue_num_max)
        self.disk_bytes = check_disk_bytes(disk_bytes, data_width)
        if not isinstance(translation, bool):
            raise TypeError(f"Translation must be a bool, not {translation!r}")
        self.translation = translation
        super().__init__({
            "irq": Out(1),
            "s_axil": In(AXI4LiteSignature(addr_width=MMIO_ADDR_WIDTH)),
            "s_hv": In(AXI4LiteSignature(addr_width=hv_addr_width(entries))),
            "m_axi": Out(AXI4Signature(addr_width=64, data_width=data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.guest_bridge = guest_bridge = AXI4LiteRegBridge(MMIO_ADDR_WIDTH)
        m.submodules.hv_bridge = hv_bridge = AXI4LiteRegBridge(hv_addr_width(self.entries))
        m.submodules.mmio = mmio = VirtioMmioRegs(queue_num_max=self.queue_num_max,
                                                  disk_bytes=self.disk_bytes)
        m.submodules.hv = hv = PrivilegedRegs(entries=self.entries)
        unit = TranslationUnit if self.translation else PassThroughUnit
        m.submodules.xlate = xlate = unit(self.entries)
        handle_mode = hv.handle_mode if self.translation else 0
        m.submodules.disk = disk = RamDisk(self.disk_bytes, self.data_width)
        m.submodules.dma = dma = DmaEngine(data_width=self.data_width,
                                           disk_bytes=self.disk_bytes,
                                           ref_bits=xlate.ref_bits)
        m.submodules.engine = engine = RingEngine(queue_num_max=self.queue_num_max,
                                                  disk_bytes=self.disk_bytes)

        wiring.connect(m, wiring.flipped(self.s_axil), guest_bridge.axi)
        wiring.connect(m, wiring.flipped(self.s_hv), hv_bridge.axi)
        wiring.connect(m, guest_bridge.reg, mmio.bus)
        wiring.connect(m, hv_bridge.reg, hv.bus)
        wiring.connect(m, dma.m_axi, wiring.flipped(self.m_axi))

        m.d.comb += [
            self.irq.eq(mmio.irq),
            # privileged configuration
            mmio.handle_mode.eq(handle_mode),
            xlate.handle_mode.eq(handle_mode),
            xlate.domid.eq(hv.domid),
            xlate.cfg_changed.eq(hv.cfg_changed),
            xlate.tbl_addr.eq(hv.tbl_addr),
            xlate.tbl_wdata.eq(hv.tbl_wdata),
            xlate.tbl_wen.eq(hv.tbl_wen),
            hv.tbl_rdata.eq(xlate.tbl_rdata),
            # queue registers to the ring engine
            engine.queue_num.eq(mmio.queue_num),
            engine.queue_ready.eq(mmio.queue_ready),
            engine.queue_desc.eq(mmio.queue_desc),
            engine.queue_avail.eq(mmio.queue_avail),
            engine.queue_used.eq(mmio.queue_used),
            engine.notify.eq(mmio.notify),
            engine.dev_reset.eq(mmio.dev_reset),
            mmio.used_irq.eq(engine.used_irq),
            mmio.fault.eq(engine.fault),
            mmio.engine_idle.eq(engine.idle),
            # the reset write's own cycle too: no burst starts once it is accepted
            dma.abort.eq(engine.abort | mmio.dev_reset),
            hv.fault.eq(engine.fault),
            hv.fault_cause.eq(engine.fault_cause),
            hv.fault_addr.eq(dma.fault_addr),
            hv.completed.eq(engine.completed),
            hv.xlate.eq(dma.xlate),
            hv.inflight.eq(dma.inflight),
            hv.burst_done.eq(dma.burst_done),
            # ring engine to DMA
            dma.pre_vaddr.eq(engine.pre_vaddr),
            dma.pre_hold.eq(engine.pre_hold),
            dma.pre_cont.eq(engine.pre_cont),
            dma.cmd_valid.eq(engine.cmd_valid),
            engine.cmd_ready.eq(dma.cmd_ready),
            dma.cmd_write.eq(engine.cmd_write),
            dma.cmd_drain.eq(engine.cmd_drain),
            dma.cmd_cont.eq(engine.cmd_cont),
            dma.cmd_vaddr.eq(engine.cmd_vaddr),
            dma.cmd_len.eq(engine.cmd_len),
            dma.cmd_disk.eq(engine.cmd_disk),
            dma.cmd_dpos.eq(engine.cmd_dpos),
            engine.dma_done.eq(dma.done),
            engine.dma_fault.eq(dma.fault),
            engine.dma_failed.eq(dma.failed),
            engine.dma_r_last_beat.eq(dma.r_last_beat),
            engine.dma_busy.eq(dma.busy),
            engine.cap_we.eq(dma.cap_we),
            engine.cap_wdata.eq(dma.cap_wdata),
            dma.payload.eq(engine.payload),
            dma.serial.eq(engine.serial),
            # DMA to translation unit and RAM disk
            xlate.req_ref.eq(dma.xl_ref),
            xlate.keep.eq(dma.xl_keep),
            xlate.req_high.eq(dma.xl_high),
            xlate.req_handle.eq(dma.xl_handle),
            xlate.req_write.eq(dma.xl_write),
            dma.xl_fault.eq(xlate.resp_fault),
            dma.xl_ok.eq(xlate.resp_ok),
            dma.xl_frame.eq(xlate.resp_frame),
            dma.xl_mode.eq(xlate.resp_mode),
            dma.xl_stale.eq(xlate.resp_stale),
            disk.rd_word.eq(dma.disk_rd_word),
            dma.disk_rd_lo.eq(disk.rd_lo),
            dma.disk_rd_hi.eq(disk.rd_hi),
            disk.wr_word.eq(dma.disk_wr_word),
            disk.wr_data.eq(dma.disk_wr_data),
            disk.wr_en_lo.eq(dma.disk_wr_en_lo),
            disk.wr_en_hi.eq(dma.disk_wr_en_hi),
        ]
        return m
