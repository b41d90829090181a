"""IOVA mode on the RTL: the driver's requests through the IOTLB, misses answered by the
hypervisor coroutine (:mod:`tb.hv_iommu`)."""

from __future__ import annotations

import random

import cocotb

from models import spec
from sw.alloc import PageAllocator
from sw.dma import IdentityDma
from sw.driver import BlkRequest, VirtioBlkDriver
from sw.hypervisor import Hypervisor

from .bench import DeviceBench
from .hv_iommu import MissServer
from .runner import DeviceConfig, params


@cocotb.test()
async def test_identity_iova(dut):
    """Every page mapped IOVA = PA, read-write: requests complete, data round-trips, and every
    page is missed once, then hit."""
    p = params()
    cfg = DeviceConfig.from_env()
    tb = DeviceBench(dut, mem_bytes=1 << 22, data_width=cfg.data_width)
    await tb.reset()
    hv = Hypervisor(tb.hv)
    await hv.setup(False, 7)
    await tb.hv.write32(spec.HV_CTRL, spec.MODE_IOVA)
    assert await tb.hv.read32(spec.HV_CTRL) == spec.MODE_IOVA
    assert await tb.hv.read32(spec.HV_IOTLB_ENTRIES) == 64
    server = MissServer(dut, tb.hv, lambda page: (page, True, True), latency=p.get("latency", 5))
    server.start()
    alloc = PageAllocator(tb.mem, seed=1)
    driver = VirtioBlkDriver(tb, IdentityDma(), alloc, seed=1)
    await driver.init(None)
    rng = random.Random(3)
    data = rng.randbytes(3 * 4096 + 512)
    res = await driver.run_batch([
        BlkRequest(spec.VIRTIO_BLK_T_OUT, 8, data=data, offsets=[100]),
        BlkRequest(spec.VIRTIO_BLK_T_IN, 8, length=len(data), offsets=[4000]),
        BlkRequest(spec.VIRTIO_BLK_T_GET_ID, length=spec.VIRTIO_BLK_ID_BYTES),
    ])
    assert [r.status for r in res] == [0, 0, 0], res
    assert res[1].data == data
    assert res[2].data == spec.DEVICE_SERIAL
    hits = await tb.hv.read32(spec.HV_STAT_IOTLB_HITS)
    misses = await tb.hv.read32(spec.HV_STAT_IOTLB_MISSES)
    tb.log.info("IOVA: %d misses (%d served), %d hits, %d transactions", misses,
                len(server.misses), hits, len(tb.monitor.records))
    assert misses == len(server.misses) > 0
    assert len({iova >> 12 for iova, _ in server.misses}) == len(server.misses)
    assert hits >= misses
    assert (await hv.fault()).count == 0
