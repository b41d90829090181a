"""IOVA mode on the RTL: the driver's requests through the IOTLB, misses answered by the
hypervisor coroutine (:mod:`tb.hv_iommu`)."""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from models import spec
from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.dma import IdentityDma, IovaDma
from sw.driver import BlkRequest, VirtioBlkDriver
from sw.hypervisor import Hypervisor
from sw.iommu import IommuModel, IommuPageTable, MissPolicy
from sw.workload import ExpectedDisk, random_requests

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


MEM = 1 << 22


async def _iova_workload(link, hv, table, reqs, seed: int):
    """The driver with Linux's IOVA DMA API (``sw.dma.IovaDma``, strict unmaps) runs ``reqs`` in
    batches of 1, 3 or 8; every completion is checked against the expected disk."""
    await hv.setup(spec.MODE_IOVA, 7)
    dma = await IovaDma.create(hv, table)
    alloc = PageAllocator(link.mem, 0x1000, MEM - 0x1000, seed=seed)
    drv = VirtioBlkDriver(link, dma, alloc, seed=seed)
    await drv.init()
    exp = ExpectedDisk()
    rng = random.Random(seed)
    done = 0
    while done < len(reqs):
        batch = reqs[done:done + rng.choice([1, 3, 8])]
        for q, r in zip(batch, await drv.run_batch(batch), strict=True):
            e = exp.expect(q)
            assert (r.status, r.used_len) == (e.status, e.used_len), (q, r, e)
            if e.data is not None:
                assert r.data[:len(e.data)] == e.data
        done += len(batch)
    await drv.reset()
    return exp, dma


@cocotb.test()
async def test_iova_driver(dut):
    """The guest driver through IOVA handles (``IovaDma``: an IOVA allocator, map, strict
    unmap with invalidation and HV_SYNC), the hypervisor answering misses from the guest's
    IOMMU page table after ``latency`` cycles (``sw.iommu.IommuModel``), on the RTL and on the
    reference model: the same completions, the same misses (IOVA, direction) in the same order,
    the same miss and invalidation counts, the same disk, no fault, nothing left mapped."""
    p = params()
    cfg = DeviceConfig.from_env()
    seed = p.get("seed", 1)
    tb = DeviceBench(dut, mem_bytes=MEM, data_width=cfg.data_width)
    await tb.reset()
    hv = Hypervisor(tb.hv)
    table = IommuPageTable()

    async def delay(n):
        await ClockCycles(dut.clk, n)

    iommu = IommuModel(table, MissPolicy(latency=p.get("latency", 5)), delay=delay)

    async def wait():
        await ReadOnly()
        if not int(dut.hv_irq.value):
            await RisingEdge(dut.hv_irq)
        await RisingEdge(dut.clk)

    task = cocotb.start_soon(iommu.serve(hv, wait))
    reqs = random_requests(seed, p.get("requests", 40), cfg.disk_bytes // 512)
    _exp, dma = await _iova_workload(tb, hv, table, reqs, seed)
    task.cancel()
    stats = await hv.iotlb_stats()
    fault = await hv.fault()
    tb.log.info("RTL: %s, %d misses served, %s", stats, len(iommu.log), fault)
    assert fault.count == 0, fault
    assert stats.misses == len(iommu.log) > 0
    assert all(r.resolved == spec.MISS_RESOLVE_RETRY for r in iommu.log)
    assert not dma.mappings and len(table) == 0

    mtable = IommuPageTable()
    dev = ReferenceDevice(GuestMemory(MEM), on_iotlb_miss=IommuModel(mtable).hook(),
                          data_width=cfg.data_width, entries=cfg.entries,
                          disk_bytes=cfg.disk_bytes)
    mhv = Hypervisor(dev.hv)
    mexp, _ = await _iova_workload(dev, mhv, mtable, reqs, seed)
    mstats = await mhv.iotlb_stats()
    tb.log.info("model: %s", mstats)
    assert [(m.iova, m.write) for m in iommu.misses] == dev.misses
    assert (stats.misses, stats.invalidated) == (mstats.misses, mstats.invalidated)
    assert bytes(dev.disk) == bytes(mexp.data)
