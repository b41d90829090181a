"""Top level: ``virtio_blk_handle``, the handle-addressed virtio-blk device.

Ports (an external contract, docs/architecture.md and README "Integrating the Verilog"):
``clk``, ``rst`` (synchronous, active high), ``irq``, ``hv_irq`` (an IOTLB miss is pending,
docs/iotlb.md), the guest register port ``s_axil``
(AXI4-Lite), the privileged port ``s_hv`` (AXI4-Lite) and the DMA port ``m_axi`` (AXI4, 64-bit
addresses). In Verilog the AXI members are flattened to ``s_axil__awaddr`` etc.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models import spec
from models.features import Features

from .axi import AXI4LiteSignature, AXI4Signature
from .dma import DmaEngine
from .engine import RingEngine
from .hvregs import PrivilegedRegs, hv_addr_width
from .iotlb import check_iotlb_entries
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
    iotlb_entries : int
        IOTLB entries for IOVA mode (default 64; 0: no IOTLB, HV_CTRL takes modes 0 and 1
        only; docs/iotlb.md).
    indirect, event_idx, seg_max, size_max, blk_size, discard, write_zeroes
        The features the build offers, all on by default (:class:`models.features.Features`,
        docs/architecture.md "Features a build offers").
    translation : bool
        ``True`` (default): the device. ``False``: the GPA-only device, for comparison: the
        grant table and its checks are left out, the device always uses guest-physical
        addresses whatever HV_CTRL says, and table entries read 0.
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH,
                 entries: int = spec.DEFAULT_ENTRIES,
                 queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES,
                 iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES, translation: bool = True,
                 indirect: bool = True, event_idx: bool = True, seg_max: int | None = None,
                 size_max: int = spec.DEFAULT_SIZE_MAX, blk_size: bool = True,
                 discard: bool = True, write_zeroes: bool = True):
        self.features = Features(indirect=indirect, event_idx=event_idx, seg_max=seg_max,
                                 size_max=size_max, blk_size=blk_size, discard=discard,
                                 write_zeroes=write_zeroes)
        self.data_width = check_data_width(data_width)
        self.entries = check_entries(entries)
        self.queue_num_max = check_queue_num_max(queue_num_max)
        self.disk_bytes = check_disk_bytes(disk_bytes, data_width)
        if not isinstance(translation, bool):
            raise TypeError(f"Translation must be a bool, not {translation!r}")
        self.translation = translation
        self.iotlb_entries = check_iotlb_entries(iotlb_entries) if translation else 0
        super().__init__({
            "irq": Out(1),
            "hv_irq": Out(1),
            "s_axil": In(AXI4LiteSignature(addr_width=MMIO_ADDR_WIDTH)),
            "s_hv": In(AXI4LiteSignature(addr_width=hv_addr_width(entries))),
            "m_axi": Out(AXI4Signature(addr_width=64, data_width=data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.guest_bridge = guest_bridge = AXI4LiteRegBridge(MMIO_ADDR_WIDTH)
        m.submodules.hv_bridge = hv_bridge = AXI4LiteRegBridge(hv_addr_width(self.entries))
        m.submodules.mmio = mmio = VirtioMmioRegs(queue_num_max=self.queue_num_max,
                                                  disk_bytes=self.disk_bytes,
                                                  features=self.features)
        m.submodules.hv = hv = PrivilegedRegs(entries=self.entries,
                                              iotlb_entries=self.iotlb_entries)
        unit = TranslationUnit if self.translation else PassThroughUnit
        m.submodules.xlate = xlate = unit(self.entries, self.iotlb_entries)
        m.submodules.disk = disk = RamDisk(self.disk_bytes, self.data_width)
        m.submodules.dma = dma = DmaEngine(data_width=self.data_width,
                                           disk_bytes=self.disk_bytes,
                                           ref_bits=xlate.ref_bits, set_bits=xlate.set_bits,
                                           lookups=self.translation)
        m.submodules.engine = engine = RingEngine(queue_num_max=self.queue_num_max,
                                                  disk_bytes=self.disk_bytes,
                                                  data_width=self.data_width,
                                                  features=self.features,
                                                  lookups=self.translation)

        wiring.connect(m, wiring.flipped(self.s_axil), guest_bridge.axi)
        wiring.connect(m, wiring.flipped(self.s_hv), hv_bridge.axi)
        wiring.connect(m, guest_bridge.reg, mmio.bus)
        wiring.connect(m, hv_bridge.reg, hv.bus)
        wiring.connect(m, mmio.queue, engine.queue)
        wiring.connect(m, hv.table, xlate.table)
        wiring.connect(m, engine.dma, dma.ring)
        wiring.connect(m, dma.lookup, xlate.lookup)
        wiring.connect(m, dma.disk, disk.port)
        wiring.connect(m, dma.m_axi, wiring.flipped(self.m_axi))
        wiring.connect(m, engine.status, hv.status.engine)
        wiring.connect(m, dma.status, hv.status.dma)
        if self.iotlb_entries:
            wiring.connect(m, hv.iotlb, xlate.iotlb)
            m.d.comb += self.hv_irq.eq(hv.iotlb.miss)
        m.d.comb += [
            self.irq.eq(mmio.irq),
            # ACCESS_PLATFORM in modes 1 and 2 (the GPA-only device: never)
            mmio.handle_mode.eq((hv.table.handle_mode
                                 | (hv.iotlb.iova_mode if self.iotlb_entries else 0))
                                if self.translation else 0),
            # (the reset write's own cycle too: no burst starts once it is accepted)
            dma.abort.eq(engine.abort),
        ]
        return m
