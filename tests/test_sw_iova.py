"""IOVA mode, software side: the IOVA allocator and IOMMU page table (sw/iommu.py), the
hypervisor's IOTLB registers and miss answering (sw/hypervisor.py, sw/iommu.py), the IovaDma
backend (sw/dma.py); expected values from docs/iotlb.md and Linux dma-iommu / iova.c."""

from __future__ import annotations

import asyncio

import pytest

from models import spec
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.dma import (
    BIDIRECTIONAL,
    FROM_DEVICE,
    TO_DEVICE,
    DmaMappingError,
    GuestBuffer,
    IovaDma,
)
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

LO, HI = spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_IOVA_HI
PLO, PHI = spec.HV_IOTLB_PA_LO, spec.HV_IOTLB_PA_HI
ATTR, CMD, SYNC, RESOLVE = (spec.HV_IOTLB_ATTR, spec.HV_IOTLB_CMD, spec.HV_SYNC,
                            spec.HV_MISS_RESOLVE)
R, W = spec.IOTLB_ATTR_READ, spec.IOTLB_ATTR_WRITE


class FakeHvPort:
    """Privileged port stand-in: stores words, logs every access. ``HV_SYNC`` reads 0 for
    ``sync_busy`` reads after each write of it, then 1."""

    def __init__(self, iotlb_entries: int = 64, sync_busy: int = 0) -> None:
        self.words: dict[int, int] = {spec.HV_VERSION: spec.HV_VERSION_VALUE,
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


def test_model_hook_and_log() -> None:
    t = IommuPageTable()
    t.map(0x5000, 0x22000)
    writes: list[tuple[int, int]] = []
    model = IommuModel(t, lambda m: MissPolicy(Answer.FAIL) if m.iova >= 0x9000 else MissPolicy())
    hook = model.hook(lambda o, v: writes.append((o, v)))
    hook(IotlbMiss(0x5010, True, False))
    hook((0x9000, False, True))  # type: ignore[arg-type]  # a plain tuple from the model
    hook(IotlbMiss(0x7000, True, False))
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
