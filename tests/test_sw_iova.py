"""IOVA mode, software side: the IOVA allocator and IOMMU page table (sw/iommu.py), the
hypervisor's IOTLB registers and miss answering (sw/hypervisor.py, sw/iommu.py), the IovaDma
backend (sw/dma.py); expected values from docs/iotlb.md and Linux dma-iommu / iova.c."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from models import spec
from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.dma import (
    BIDIRECTIONAL,
    FROM_DEVICE,
    TO_DEVICE,
    DmaMappingError,
    GrantDma,
    GuestBuffer,
    IdentityDma,
    IovaDma,
    dma_for_mode,
)
from sw.driver import BlkRequest, DeviceFault, InitError, VirtioBlkDriver
from sw.hypervisor import (
    Hypervisor,
    HypervisorError,
    IotlbMiss,
    IotlbStats,
    insert_writes,
    invalidate_writes,
)
from sw.iommu import (
    Answer,
    IommuError,
    IommuMapping,
    IommuModel,
    IommuPageTable,
    IovaAllocator,
    MissPolicy,
    OutOfIova,
    answer_miss,
)
from sw.workload import ExpectedDisk, random_requests

LO, HI = spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_IOVA_HI
PLO, PHI = spec.HV_IOTLB_PA_LO, spec.HV_IOTLB_PA_HI
ATTR, CMD, SYNC, RESOLVE = (spec.HV_IOTLB_ATTR, spec.HV_IOTLB_CMD, spec.HV_SYNC,
                            spec.HV_MISS_RESOLVE)
R, W = spec.IOTLB_ATTR_READ, spec.IOTLB_ATTR_WRITE


class FakeHvPort:
    """Privileged port stand-in: stores words, logs every access. ``HV_SYNC`` reads 0 for
    ``sync_busy`` reads after each write of it, then 1."""

    def __init__(self, iotlb_entries: int = 64, sync_busy: int = 0) -> None:
        self.words: dict[int, int] = {spec.HV_VERSION: spec.HV_VERSION_VALUE, spec.HV_ENTRIES: 64,
                                      spec.HV_IOTLB_ENTRIES: iotlb_entries, SYNC: 1}
        self.writes: list[tuple[int, int]] = []
        self.log: list[tuple[str, int, int]] = []
        self.sync_busy = sync_busy
        self._busy = 0

    async def read32(self, offset: int) -> int:
        value = self.words.get(offset, 0)
        if offset == SYNC:
            value = 0 if self._busy else 1
            self._busy = max(0, self._busy - 1)
        self.log.append(("R", offset, value))
        return value

    async def write32(self, offset: int, value: int) -> None:
        self.writes.append((offset, value))
        self.log.append(("W", offset, value))
        if offset == SYNC:
            self._busy = self.sync_busy
        elif offset != CMD:
            self.words[offset] = value

    def raise_miss(self, iova: int, read: bool, write: bool) -> None:
        self.words[spec.HV_IOTLB_MISS] = 1 | read << 1 | write << 2
        self.words[spec.HV_MISS_IOVA_LO] = iova & 0xFFFF_FFFF
        self.words[spec.HV_MISS_IOVA_HI] = iova >> 32


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def alloc() -> PageAllocator:
    return PageAllocator(GuestMemory(1 << 20), 0x10000, 0x40000, seed=3)


# --- IovaAllocator ------------------------------------------------------------------------------
def test_allocator_top_down_size_aligned() -> None:
    a = IovaAllocator()
    assert a.limit_pfn == 0xFFFFF  # below 4 GiB, as dma-iommu tries first
    assert a.alloc(1) == 0xFFFFF
    assert a.alloc(1) == 0xFFFFE
    assert a.alloc(3) == 0xFFFF8 and a.size_of(0xFFFF8) == 4  # rounded to 4, aligned to 4
    assert a.alloc(2) == 0xFFFFC  # the hole between the 4-page range and the two singles
    assert a.alloc(40) == 0xFFFC0 and a.size_of(0xFFFC0) == 40  # >= 32: not rounded; aligned 64
    assert a.alloc(1) == 0xFFFF7  # above the 40 pages (0xFFFC0-0xFFFE7)
    a.free(0xFFFFE)
    assert a.alloc(1) == 0xFFFFE  # the highest free page again
    with pytest.raises(ValueError, match="does not start"):
        a.free(0xFFFFD)
    with pytest.raises(ValueError, match="npages"):
        a.alloc(0)


def test_allocator_limits_and_exhaustion() -> None:
    a = IovaAllocator(limit_pfn=7)  # pages 1..7: IOVA page 0 is never handed out
    assert [a.alloc(1) for _ in range(3)] == [7, 6, 5]
    assert a.alloc(2) == 2  # 4-5 is taken at 5: the aligned pair below is 2-3
    assert a.alloc(1) == 4
    assert a.alloc(1) == 1
    with pytest.raises(OutOfIova, match="no 1 free IOVA"):
        a.alloc(1)
    assert a.allocated_pages == 7 and len(a) == 6
    with pytest.raises(ValueError, match="base_pfn"):
        IovaAllocator(limit_pfn=3, base_pfn=4)


def test_allocator_deterministic() -> None:
    def trace() -> list[int]:
        a, out, live = IovaAllocator(limit_pfn=0x3FF), [], []
        for i in range(200):
            if i % 3 == 2:
                a.free(live.pop(i % len(live)))
            else:
                live.append(a.alloc(1 + i * 7 % 9))
                out.append(live[-1])
        return out

    first = trace()
    assert first == trace()
    assert all(0 < p <= 0x3FF for p in first)


# --- IommuPageTable -----------------------------------------------------------------------------
def test_page_table_map_lookup_unmap() -> None:
    t = IommuPageTable()
    a = t.map(0x5000, 0x12000, read=True, write=False)
    big = t.map(0x4000_0000, 0x8000_0000, 21)  # a 2 MiB page
    assert t.lookup(0x5FFF) == a and t.lookup(0x6000) is None and t.lookup(0x4FFF) is None
    assert t.lookup(0x401F_FFFF) == big and big.translate(0x4012_3456) == 0x8012_3456
    with pytest.raises(IommuError, match="already mapped"):
        t.map(0x4010_0000, 0x1000)  # inside the large page
    with pytest.raises(IommuError, match="already mapped"):
        t.map(0x4000, 0x2000, 13)  # a large page over a small one
    with pytest.raises(IommuError, match="aligned"):
        t.map(0x6000, 0x1000, 13)
    with pytest.raises(IommuError, match="neither"):
        t.map(0x7000, 0x1000, read=False, write=False)
    with pytest.raises(IommuError, match="page size"):
        t.map(0, 0, 31)
    assert len(t) == 2 and list(t) == [a, big]
    assert t.unmap(0x4010_0000) == [big]  # part of a large page removes all of it
    assert t.unmap(0x4010_0000) == []
    assert t.unmap(0x0, 0x10000) == [a] and len(t) == 0


# --- register writes and the Hypervisor ---------------------------------------------------------
def test_insert_and_invalidate_writes() -> None:
    assert insert_writes(0x1_2345_6000, 0x7_0000_1000, 12, True, False) == [
        (LO, 0x2345_6000), (HI, 1), (PLO, 0x1000), (PHI, 7), (ATTR, 12 | R), (CMD, 1)]
    assert insert_writes(0x20_0000, 0x40_0000, 21, False, True)[-2:] == [(ATTR, 21 | W),
                                                                         (CMD, 1)]
    with pytest.raises(ValueError, match="aligned"):
        insert_writes(0x1000, 0x2000, 13)
    with pytest.raises(ValueError, match="size_log2"):
        insert_writes(0, 0, 11)
    assert invalidate_writes(0x1234_5678, 14) == [(LO, 0x1234_4000), (HI, 0), (ATTR, 14),
                                                  (CMD, 2)]


def test_hypervisor_modes() -> None:
    port = FakeHvPort()
    hv = Hypervisor(port)
    run(hv.setup(True, 5))
    run(hv.setup(False, 5))
    run(hv.setup(spec.MODE_IOVA, 5))
    assert [v for o, v in port.writes if o == spec.HV_CTRL] == [1, 0, 2]
    assert run(hv.mode()) == 2
    run(hv.set_mode(spec.MODE_GRANT))
    assert port.writes[-1] == (spec.HV_CTRL, 1)
    for bad in (3, -1, 4):
        with pytest.raises(ValueError, match="mode must be"):
            run(hv.set_mode(bad))
        with pytest.raises(ValueError, match="mode must be"):
            run(hv.setup(bad, 5))


def test_hypervisor_iotlb_registers() -> None:
    port = FakeHvPort(iotlb_entries=128)
    hv = Hypervisor(port)
    assert run(hv.iotlb_entries()) == 128
    run(hv.iotlb_insert(0x3000, 0x9000, read=True, write=True))
    run(hv.iotlb_invalidate(0x3000))
    run(hv.iotlb_invalidate_all())
    run(hv.resolve_miss())
    run(hv.resolve_miss(retry=False))
    assert port.writes == [*insert_writes(0x3000, 0x9000), *invalidate_writes(0x3000),
                           (CMD, 3), (RESOLVE, 1), (RESOLVE, 2)]
    assert run(hv.pending_miss()) is None
    port.raise_miss(0x12_3456_7ABC, read=False, write=True)
    assert run(hv.pending_miss()) == IotlbMiss(0x12_3456_7ABC, False, True)
    iova, read, write = run(hv.pending_miss())  # a plain tuple too
    assert (iova, read, write) == (0x12_3456_7ABC, False, True)
    port.words.update({spec.HV_STAT_IOTLB_HITS: 10, spec.HV_STAT_IOTLB_MISSES: 3,
                       spec.HV_STAT_IOTLB_INVALIDATED: 2})
    s = run(hv.iotlb_stats())
    assert s == IotlbStats(10, 3, 2)
    assert s - IotlbStats(4, 1, 0) == IotlbStats(6, 2, 2)


def test_sync_polls_until_one_and_bounds_the_wait() -> None:
    port = FakeHvPort(sync_busy=3)
    hv = Hypervisor(port)
    assert run(hv.sync()) == 4
    assert port.log == [("W", SYNC, 1)] + [("R", SYNC, 0)] * 3 + [("R", SYNC, 1)]
    hv = Hypervisor(FakeHvPort(sync_busy=50), sync_poll_limit=20)
    with pytest.raises(TimeoutError, match="HV_SYNC still reads 0 after 20 polls"):
        run(hv.sync())


# --- answering misses -----------------------------------------------------------------------------
def test_answer_miss_policies() -> None:
    t = IommuPageTable()
    t.map(0x5000, 0x22000, read=True, write=False)
    t.map(0x4000_0000, 0x8000_0000, 21, read=True, write=True)
    miss = IotlbMiss(0x5ABC, False, True)  # a write to a read-only page
    # the table's permission is inserted, not the one asked for
    assert answer_miss(t, miss) == [*insert_writes(0x5000, 0x22000, 12, True, False),
                                    (RESOLVE, 1)]
    assert answer_miss(t, IotlbMiss(0x6000, True, False)) == [(RESOLVE, 2)]  # unmapped
    assert answer_miss(t, miss, MissPolicy(Answer.FAIL)) == [(RESOLVE, 2)]
    assert answer_miss(t, miss, MissPolicy(Answer.RETRY)) == [(RESOLVE, 1)]
    assert answer_miss(t, miss, MissPolicy(Answer.NEVER)) == []
    assert answer_miss(t, miss, MissPolicy(Answer.NEVER, timeout=100)) == [(RESOLVE, 2)]
    assert answer_miss(t, miss, MissPolicy(latency=101, timeout=100)) == [(RESOLVE, 2)]
    assert answer_miss(t, miss, MissPolicy(latency=100, timeout=100))[-1] == (RESOLVE, 1)
    hostile = answer_miss(t, miss, MissPolicy(perms=(False, True)))
    assert hostile == [*insert_writes(0x5000, 0x22000, 12, False, True), (RESOLVE, 1)]
    big = IotlbMiss(0x4012_3456, True, False)
    assert answer_miss(t, big) == [*insert_writes(0x4000_0000, 0x8000_0000, 21), (RESOLVE, 1)]
    assert answer_miss(t, big, MissPolicy(size_log2=12)) == [
        *insert_writes(0x4012_3000, 0x8012_3000, 12), (RESOLVE, 1)]


def test_model_answer_now_and_log() -> None:
    t = IommuPageTable()
    t.map(0x5000, 0x22000)
    writes: list[tuple[int, int]] = []
    model = IommuModel(t, lambda m: MissPolicy(Answer.FAIL) if m.iova >= 0x9000 else MissPolicy())

    def write(offset: int, value: int) -> None:
        writes.append((offset, value))

    model.answer_now(IotlbMiss(0x5010, True, False), write)
    model.answer_now((0x9000, False, True), write)  # type: ignore[arg-type]  # a plain tuple
    model.answer_now(IotlbMiss(0x7000, True, False), write)
    assert writes == [*insert_writes(0x5000, 0x22000), (RESOLVE, 1), (RESOLVE, 2), (RESOLVE, 2)]
    assert model.misses == [IotlbMiss(0x5010, True, False), IotlbMiss(0x9000, False, True),
                            IotlbMiss(0x7000, True, False)]
    assert [r.resolved for r in model.log] == [1, 2, 2]
    assert model.log[0].mapping == IommuMapping(0x5000, 0x22000)
    assert model.log[2].mapping is None


def test_model_serves_asynchronously_after_latency() -> None:
    port = FakeHvPort()
    hv = Hypervisor(port)
    t = IommuPageTable()
    t.map(0x8000, 0x1000)
    delays: list[int] = []

    async def delay(n: int) -> None:
        delays.append(n)

    model = IommuModel(t, MissPolicy(latency=40), delay=delay)

    async def body() -> None:
        assert await model.serve_one(hv) is None
        port.raise_miss(0x8040, True, False)
        rec = await model.serve_one(hv)
        assert rec is not None and rec.resolved == 1
        model.policy = MissPolicy(Answer.NEVER, timeout=500)
        rec = await model.serve_one(hv)
        assert rec is not None and rec.timed_out and rec.resolved == 2
        model.policy = MissPolicy(Answer.NEVER)
        waits = 0

        async def wait() -> None:
            nonlocal waits
            waits += 1

        await model.serve(hv, wait)  # a miss left pending ends the loop
        assert waits == 1 and model.log[-1].writes == []

    run(body())
    assert delays == [40, 500]
    assert port.writes == [*insert_writes(0x8000, 0x1000), (RESOLVE, 1), (RESOLVE, 2)]


# --- IovaDma --------------------------------------------------------------------------------------
def test_iova_map_scattered_pages(alloc: PageAllocator) -> None:
    port = FakeHvPort()
    dma = run(IovaDma.create(Hypervisor(port)))
    buf = GuestBuffer.allocate(alloc, 3 * 4096, offset=0x123)  # spans 4 scattered pages
    assert not buf.contiguous
    h = run(dma.map(buf, FROM_DEVICE))
    assert h == 0xFFFFC << 12 | 0x123  # 4 pages, top-down below 4 GiB, 4-aligned
    for i, frame in enumerate(buf.pages):
        m = dma.table.lookup((0xFFFFC + i) << 12)
        assert m == IommuMapping((0xFFFFC + i) << 12, frame << 12, 12, read=False, write=True)
    assert port.writes == []  # the IOTLB is filled on a miss, not at map time
    small = GuestBuffer.allocate(alloc, 10, offset=4000)
    h2 = run(dma.map(small, TO_DEVICE))
    assert h2 == 0xFFFFB << 12 | 4000
    assert dma.table.lookup(h2) == IommuMapping(0xFFFFB000, small.pages[0] << 12, read=True,
                                                write=False)
    h3 = run(dma.map(GuestBuffer.allocate(alloc, 4097), BIDIRECTIONAL))
    m3 = dma.table.lookup(h3)
    assert h3 == 0xFFFF8 << 12 and m3 is not None and (m3.read, m3.write) == (True, True)
    assert dma.requires_access_platform and not dma.needs_contiguous


def test_iova_strict_unmap_invalidates_then_syncs(alloc: PageAllocator) -> None:
    port = FakeHvPort(sync_busy=2)
    dma = IovaDma(Hypervisor(port))
    buf = GuestBuffer.allocate(alloc, 3 * 4096)  # 3 pages: 4 IOVA pages allocated
    h = run(dma.map(buf, TO_DEVICE))
    assert h == 0xFFFFC000
    run(dma.unmap(h))
    assert port.log == [("W", LO, 0xFFFFC000), ("W", HI, 0), ("W", ATTR, 14), ("W", CMD, 2),
                        ("W", SYNC, 1), ("R", SYNC, 0), ("R", SYNC, 0), ("R", SYNC, 1)]
    assert len(dma.table) == 0 and len(dma.iovad) == 0 and not dma.mappings
    assert run(dma.map(buf, TO_DEVICE)) == h  # freed after the sync: the same range again


def test_iova_unmap_errors(alloc: PageAllocator) -> None:
    dma = IovaDma(Hypervisor(FakeHvPort()))
    buf = GuestBuffer.allocate(alloc, 100, offset=8)
    h = run(dma.map(buf, FROM_DEVICE))
    with pytest.raises(DmaMappingError, match=r"inside the mapping at 0xfffff008"):
        run(dma.unmap(h + 4))
    with pytest.raises(DmaMappingError, match=r"^unmap of IOVA 0x1234, which is not mapped$"):
        run(dma.unmap(0x1234))
    run(dma.unmap(h))
    with pytest.raises(DmaMappingError, match=r"^double unmap of IOVA 0xfffff008"):
        run(dma.unmap(h))
    with pytest.raises(ValueError, match="direction"):
        run(dma.map(buf, 5))  # type: ignore[arg-type]
    with pytest.raises(HypervisorError, match="no IOTLB"):
        run(IovaDma.create(Hypervisor(FakeHvPort(iotlb_entries=0))))


def test_iova_out_of_space_leaves_nothing(alloc: PageAllocator) -> None:
    dma = IovaDma(Hypervisor(FakeHvPort()), allocator=IovaAllocator(limit_pfn=4))
    run(dma.map(GuestBuffer.allocate(alloc, 4096), TO_DEVICE))  # pfn 4
    with pytest.raises(MemoryError):
        run(dma.map(GuestBuffer.allocate(alloc, 4 * 4096), TO_DEVICE))
    assert len(dma.table) == 1 and len(dma.iovad) == 1


def test_iova_invalidate_ranges_large_and_unaligned() -> None:
    from sw.dma import IovaMapping

    m = IovaMapping(0x100, 40, [0] * 40, 0, TO_DEVICE, True, False)
    assert m.invalidate_ranges() == [(0x100000, 18)]  # 40 pages aligned to 64: one command
    odd = IovaMapping(0x103, 6, [0] * 6, 0, TO_DEVICE, True, False)
    assert odd.invalidate_ranges() == [(0x103000, 12), (0x104000, 14), (0x108000, 12)]


def test_iova_lazy_flush_and_prefetch(alloc: PageAllocator) -> None:
    port = FakeHvPort()
    dma = IovaDma(Hypervisor(port), strict=False, flush_queue_size=2, prefetch=True)
    b1, b2 = GuestBuffer.allocate(alloc, 10), GuestBuffer.allocate(alloc, 10)
    h1 = run(dma.map(b1, TO_DEVICE))
    assert port.writes == insert_writes(h1, b1.pages[0] << 12, 12, True, False)
    h2 = run(dma.map(b2, FROM_DEVICE))
    port.writes.clear()
    run(dma.unmap(h1))
    assert port.writes == [] and len(dma.iovad) == 2  # deferred: IOVA not reused yet
    run(dma.unmap(h2))
    assert port.writes == [(CMD, 3), (SYNC, 1)] and len(dma.iovad) == 0


# --- the driver in IOVA mode against the reference model ------------------------------------------
DOMID = 3
IN, OUT = spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT


@dataclass
class Rig:
    dev: ReferenceDevice
    hv: Hypervisor
    dma: IovaDma
    iommu: IommuModel
    drv: VirtioBlkDriver


async def make_rig(*, seed: int = 0, iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES,
                   policy: MissPolicy | Callable[[IotlbMiss], MissPolicy] | None = None,
                   data_width: int = 64, **drv_kw: Any) -> Rig:
    """The guest's page table shared by its IovaDma and the hypervisor's IommuModel, which
    answers the model's misses through ``on_iotlb_miss``."""
    mem = GuestMemory(4 << 20)
    table = IommuPageTable()
    iommu = IommuModel(table, MissPolicy() if policy is None else policy)
    dev = ReferenceDevice(mem, iotlb_entries=iotlb_entries, on_iotlb_miss=iommu.hook(),
                          data_width=data_width)
    hv = Hypervisor(dev.hv)
    await hv.setup(spec.MODE_IOVA, DOMID)
    dma = await IovaDma.create(hv, table)
    alloc = PageAllocator(mem, 0x1000, (4 << 20) - 0x1000, seed=seed)
    return Rig(dev, hv, dma, iommu, VirtioBlkDriver(dev, dma, alloc, seed=seed, **drv_kw))


def arun(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_driver_init_in_iova_mode() -> None:
    async def body() -> None:
        rig = await make_rig()
        d = rig.drv
        await d.init()
        assert await rig.hv.mode() == spec.MODE_IOVA
        assert d.features >> spec.VIRTIO_F_ACCESS_PLATFORM & 1  # offered in mode 2, accepted
        # the rings are mapped through IovaDma: IOVAs below 4 GiB, translated by the table
        for addr, buf in ((d.desc_addr, d.desc_buf), (d.avail_addr, d.avail_buf),
                          (d.used_addr, d.used_buf)):
            assert buf is not None and 0xFFF0_0000 <= addr < 1 << 32
            m = rig.dma.table.lookup(addr)
            assert m is not None and m.translate(addr) == buf.phys(0)
        assert rig.dev.queue_desc == d.desc_addr and rig.dev.queue_device == d.used_addr
        assert rig.iommu.log == []  # nothing touched memory yet

    arun(body)


def test_driver_round_trip_miss_sequence_and_stats() -> None:
    async def body() -> None:
        rig = await make_rig()
        d, dev = rig.drv, rig.dev
        await d.init()
        data = bytes(range(256)) * 4 + bytes(512)  # 3 sectors, one page
        seen: list[list[tuple[int, bool]]] = []
        maps: list[list[tuple[int, bool, bool]]] = []
        orig_map = rig.dma.map

        async def spy_map(buf: GuestBuffer, direction: Any) -> int:
            h = await orig_map(buf, direction)
            maps[-1].append((h, *IovaDma.prot(direction)))
            return h

        rig.dma.map = spy_map  # type: ignore[method-assign]
        for q in (BlkRequest(OUT, 5, data=data), BlkRequest(IN, 5, length=len(data)),
                  BlkRequest(IN, 5, length=len(data))):
            before, nlog = await rig.hv.iotlb_stats(), len(rig.iommu.log)
            xlate = await rig.hv.hv.read32(spec.HV_STAT_XLATE)
            maps.append([])
            res = await d.request(q)
            assert res.ok and (q.data is not None or res.data == data)
            new = rig.iommu.log[nlog:]
            seen.append([(r.miss.iova >> 12, r.miss.write) for r in new])
            assert all(r.resolved == 1 and r.mapping is not None for r in new)
            # each miss was for a mapping of this request or of the rings, in its direction
            for r in new:
                assert r.miss.read != r.miss.write
                assert (r.mapping.read, r.mapping.write)[r.miss.write]  # type: ignore[union-attr]
            stats = await rig.hv.iotlb_stats() - before
            lookups = await rig.hv.hv.read32(spec.HV_STAT_XLATE) - xlate
            assert stats.misses == len(new) and lookups == stats.hits + stats.misses
            # strict unmap: this request's entries (header, data, status) invalidated
            assert stats.invalidated == len(maps[-1])
            for h, _, _ in maps[-1]:
                assert dev.iotlb.lookup(h) is None and rig.dma.table.lookup(h) is None
        ring = [(d.avail_addr >> 12, False), (d.desc_addr >> 12, False)]
        used = (d.used_addr >> 12, True)
        # first request: the rings miss too; (header R, data R, status W); the used ring W
        hdr, dat, st = (h >> 12 for h, _, _ in maps[0])
        assert seen[0] == [*ring, (hdr, False), (dat, False), (st, True), used]
        for k in (1, 2):  # later: the rings hit; the request's fresh IOVAs miss
            hdr, dat, st = (h >> 12 for h, _, _ in maps[k])
            assert seen[k] == [(hdr, False), (dat, True), (st, True)]
        # the hypervisor saw exactly the misses the device raised, in order
        assert [(m.iova, m.write) for m in rig.iommu.misses] == dev.misses
        assert dev.faults == []

    arun(body)


@pytest.mark.parametrize("entries,width,no_irq", [(8, 64, False), (64, 32, True),
                                                  (16, 128, False)])
def test_driver_random_workload(entries: int, width: int, no_irq: bool) -> None:
    """Every miss answered from the table, data right; evictions under pressure (8 entries)."""
    async def body() -> None:
        rig = await make_rig(seed=entries, iotlb_entries=entries, data_width=width,
                             no_interrupt=no_irq)
        d = rig.drv
        await d.init()
        exp = ExpectedDisk()
        reqs = random_requests(99, 150, d.capacity)
        done, rng = 0, random.Random(7)
        while done < len(reqs):
            batch = reqs[done : done + rng.choice([1, 3, 20])]
            results = await d.run_batch(batch)
            for q, r in zip(batch, results, strict=True):
                e = exp.expect(q)
                assert (r.status, r.used_len) == (e.status, e.used_len)
                if e.data is not None:
                    assert r.data[: len(e.data)] == e.data
            done += len(batch)
        assert bytes(rig.dev.disk) == bytes(exp.data)
        assert rig.dev.faults == []
        stats = await rig.hv.iotlb_stats()
        assert stats.misses == len(rig.iommu.log) == len(rig.dev.misses) > 150
        assert len(rig.dev.iotlb.evictions) > (100 if entries == 8 else 0)  # under pressure
        assert all(r.resolved == 1 for r in rig.iommu.log)
        assert len(rig.dma.mappings) == 3 and len(rig.dma.table) == 3  # only the rings left
        assert d.free_descriptors == d.queue_size

    arun(body)


@pytest.mark.parametrize("case,cause", [
    ("fail", spec.FAULT_IOTLB_FAILED),  # the hypervisor fails the data page's miss
    ("timeout", spec.FAULT_IOTLB_FAILED),  # never answers: the timeout fails it
    ("readonly", spec.FAULT_READONLY),  # maps the device-written data page read-only
    ("writeonly", spec.FAULT_IOTLB_NO_READ),  # maps the header page write-only
])
def test_driver_faults_from_hostile_answers(case: str, cause: int) -> None:
    async def body() -> None:
        target: list[int] = []

        def policy(miss: IotlbMiss) -> MissPolicy:
            if miss.iova >> 12 not in target:
                return MissPolicy()
            return {"fail": MissPolicy(Answer.FAIL),
                    "timeout": MissPolicy(Answer.NEVER, timeout=1000),
                    "readonly": MissPolicy(perms=(True, False)),
                    "writeonly": MissPolicy(perms=(False, True))}[case]

        rig = await make_rig(policy=policy)
        d = rig.drv
        await d.init()
        await d.write(0, b"\x11" * 512)
        token = await d.submit(BlkRequest(IN, 0, length=512))
        rec = d._inflight[token]  # the test aims at one mapping of the request
        piece = rec.pieces[0 if case == "writeonly" else 1]
        assert piece.handle is not None
        target.append(piece.handle >> 12)
        await d.kick()
        with pytest.raises(DeviceFault):
            await d.wait([token])
        f = await rig.hv.fault()
        assert f.latched and f.cause == cause and f.addr >> 12 == piece.handle >> 12
        if case == "timeout":
            assert rig.iommu.log[-1].timed_out
        # recovery: driver reset, init, the same request goes through
        await rig.hv.clear_fault()
        target.clear()
        await d.reset()
        assert not rig.dma.mappings  # everything unmapped, strictly
        await d.init()
        assert await d.read(0) == b"\x11" * 512

    arun(body)


def test_page_table_overlap_scan_matches_probe() -> None:
    t = IommuPageTable()
    for k in range(40):
        t.map(k * 0x3000, k << 12)
    t.map(0x20_0000, 0x20_0000, 21)
    for lo, n in ((0, 1), (0x2FFF, 2), (0x10000, 0x30000), (0, 1 << 22), (0x1F_F000, 0x2000)):
        assert t.overlapping(lo, n) == [m for m in t if m.overlaps(lo, n)]


def test_dma_for_mode() -> None:
    async def body() -> None:
        hv = Hypervisor(FakeHvPort())
        assert isinstance(await dma_for_mode(hv, False, 1), IdentityDma)
        assert isinstance(await dma_for_mode(hv, spec.MODE_GRANT, 1), GrantDma)
        table = IommuPageTable()
        iova = await dma_for_mode(hv, spec.MODE_IOVA, 1, table=table, strict=False)
        assert isinstance(iova, IovaDma) and iova.table is table and not iova.strict
        with pytest.raises(ValueError, match="mode must be"):
            await dma_for_mode(hv, 3, 1)

    arun(body)


def test_raw_staging_for_hostile_use() -> None:
    port = FakeHvPort()
    hv = Hypervisor(port)
    run(hv.iotlb_stage(iova=0x1234, attr=0x3F))
    run(hv.iotlb_command(7))
    assert port.writes == [(LO, 0x1234), (HI, 0), (ATTR, 0x3F), (CMD, 7)]


def test_driver_refuses_iova_backend_on_a_gpa_device() -> None:
    async def body() -> None:
        rig = await make_rig()
        await rig.hv.set_mode(spec.MODE_GPA)  # no ACCESS_PLATFORM offered
        with pytest.raises(InitError, match="ACCESS_PLATFORM"):
            await rig.drv.init()

    arun(body)


def test_concurrent_command_sequences_do_not_interleave() -> None:
    """A miss server inserting while the DMA backend invalidates: the staging registers are
    shared, so each command's writes must stay together (a real interleaving put an invalidate's
    IOVA under an insert's attributes on the RTL bench)."""
    class YieldingPort(FakeHvPort):
        async def read32(self, offset: int) -> int:
            await asyncio.sleep(0)
            return await super().read32(offset)

        async def write32(self, offset: int, value: int) -> None:
            await asyncio.sleep(0)
            await super().write32(offset, value)

    port = YieldingPort()
    hv = Hypervisor(port)

    async def body() -> None:
        await asyncio.gather(hv.iotlb_insert(0x5000, 0x9000, 12, True, False),
                             hv.iotlb_invalidate(0x8000, 13), hv.iotlb_invalidate_all())

    run(body())
    assert port.writes == [*insert_writes(0x5000, 0x9000, 12, True, False),
                           *invalidate_writes(0x8000, 13), (CMD, 3)]
    assert {o for k, o, _ in port.log if k == "R"} == {spec.HV_VERSION}  # waiting, by reading


def test_miss_answer_looks_up_under_the_lock() -> None:
    """An unmap racing a miss's answer: the lookup happens with the lock held, after the
    latency, so a page unmapped during the latency is failed, not inserted."""
    port = FakeHvPort()
    hv = Hypervisor(port)
    t = IommuPageTable()
    t.map(0x8000, 0x1000)

    async def delay(n: int) -> None:
        t.unmap(0x8000)  # the guest unmaps while the hypervisor waits

    model = IommuModel(t, MissPolicy(latency=10), delay=delay)
    rec = run(model.answer(hv, IotlbMiss(0x8000, True, False)))
    assert rec.mapping is None and port.writes == [(RESOLVE, 2)]
