"""The driver model against the reference device (models.device.ReferenceDevice), both modes."""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from models import spec
from models.device import ReferenceDevice
from models.features import Features
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.dma import FROM_DEVICE, TO_DEVICE, DmaApi, GrantDma, IdentityDma, OutOfGrantRefs
from sw.driver import (
    BlkError,
    BlkRequest,
    DeviceFault,
    FeaturesRefused,
    InitError,
    QueueFull,
    VirtioBlkDriver,
)
from sw.hypervisor import Hypervisor
from sw.workload import ExpectedDisk, random_requests

DOMID = 3
IN, OUT, FLUSH, GET_ID = (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT, spec.VIRTIO_BLK_T_FLUSH,
                          spec.VIRTIO_BLK_T_GET_ID)
MODES = pytest.mark.parametrize("handle", [False, True], ids=["gpa", "handle"])


@dataclass
class Rig:
    dev: ReferenceDevice
    hv: Hypervisor
    dma: DmaApi
    alloc: PageAllocator
    drv: VirtioBlkDriver
    handle: bool


async def make_rig(
    handle: bool,
    *,
    mem_size: int = 4 << 20,
    seed: int = 0,
    dma: str | None = None,
    entries: int = spec.DEFAULT_ENTRIES,
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
    disk_bytes: int = spec.DEFAULT_DISK_BYTES,
    data_width: int = 64,
    bus_error: Callable[[Any], bool] | None = None,
    features: Features | None = None,
    **drv_kw: Any,
) -> Rig:
    mem = GuestMemory(mem_size)
    dev = ReferenceDevice(mem, entries=entries, queue_num_max=queue_num_max,
                          disk_bytes=disk_bytes, data_width=data_width, bus_error=bus_error,
                          features=features)
    hv = Hypervisor(dev.hv)
    await hv.setup(handle, DOMID)
    kind = dma or ("grant" if handle else "identity")
    backend: DmaApi = await GrantDma.create(hv, DOMID) if kind == "grant" else IdentityDma()
    alloc = PageAllocator(mem, 0x1000, mem_size - 0x1000, seed=seed)
    drv = VirtioBlkDriver(dev, backend, alloc, seed=seed, **drv_kw)
    return Rig(dev, hv, backend, alloc, drv, handle)


async def ready_rig(handle: bool, **kw: Any) -> Rig:
    """A rig whose driver has brought the device up (``init``)."""
    rig = await make_rig(handle, **kw)
    await rig.drv.init()
    return rig


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def sync(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """An async test as the plain function pytest calls (its parameters kept)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def check_results(exp: ExpectedDisk, reqs: list[BlkRequest], results: list[Any]) -> None:
    assert [r.request for r in results] == reqs
    for q, r in zip(reqs, results, strict=True):
        e = exp.expect(q)
        assert (r.status, r.used_len) == (e.status, e.used_len), (q, r, e)
        if e.data is not None:
            assert r.data[: len(e.data)] == e.data


# --- bring-up -------------------------------------------------------------------------------------
@MODES
@pytest.mark.parametrize("build", ["foundation", "default"])
@sync
async def test_init(handle: bool, build: str) -> None:
    """The foundation's device offers exactly what the driver negotiates by default; the
    default build offers issue 17's features too, and the driver still negotiates only the
    foundation's set unless asked (``init(features=...)``, tests/test_sw_features.py)."""
    feats = Features.none() if build == "foundation" else Features()
    rig = await ready_rig(handle, queue_num_max=64, features=feats)
    d = rig.drv
    assert d.capacity == spec.DEFAULT_DISK_BYTES // 512
    assert d.queue_size == 64
    want = 1 << spec.VIRTIO_F_VERSION_1 | 1 << spec.VIRTIO_BLK_F_FLUSH
    if handle:
        want |= 1 << spec.VIRTIO_F_ACCESS_PLATFORM
    if build == "foundation":
        assert d.features == want == d.device_features
    else:
        assert d.features == want
        assert d.device_features == feats.offered(64) | (
            1 << spec.VIRTIO_F_ACCESS_PLATFORM if handle else 0)
    assert await d.device_status() == (spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER
                                       | spec.STATUS_FEATURES_OK | spec.STATUS_DRIVER_OK)
    for addr in (d.desc_addr, d.avail_addr, d.used_addr):
        assert bool(addr >> 63) == handle
    assert rig.dev.queue_desc == d.desc_addr and rig.dev.queue_driver == d.avail_addr
    assert rig.dev.queue_device == d.used_addr and rig.dev.queue_ready == 1
    assert rig.dev.queue_num == 64
    with pytest.raises(ValueError, match="power of two"):
        await d.init(queue_size=48)
    with pytest.raises(ValueError, match="power of two"):
        await d.init(queue_size=128)
    await d.init(queue_size=2)
    assert rig.dev.queue_num == 2


@MODES
@sync
async def test_round_trips(handle: bool) -> None:
    rig = await ready_rig(handle)
    d = rig.drv
    init = spec.ramdisk_init(spec.DEFAULT_DISK_BYTES)
    assert await d.read(0) == init[:512]
    assert await d.read(5, 9) == init[5 * 512 : 14 * 512]
    payload = random.Random(1).randbytes(3 * 512)
    await d.write(7, payload)
    assert bytes(rig.dev.disk[7 * 512 : 10 * 512]) == payload
    assert await d.read(6, 5) == init[6 * 512 : 7 * 512] + payload + init[10 * 512 : 11 * 512]
    await d.flush()
    assert await d.get_id() == spec.DEVICE_SERIAL
    last = d.capacity - 1
    assert await d.read(last) == init[last * 512 :]
    with pytest.raises(BlkError, match="IOERR"):
        await d.read(last, 2)
    with pytest.raises(BlkError, match="IOERR"):
        await d.write(0, b"x" * 100)
    res = await d.request(BlkRequest(77))
    assert res.status == spec.VIRTIO_BLK_S_UNSUPP and res.used_len == 1
    # everything released: only the rings are mapped
    assert not d.in_flight and d.free_descriptors == d.queue_size
    if handle:
        assert isinstance(rig.dma, GrantDma) and len(rig.dma.mappings) == 3
    assert rig.dev.faults == []


@MODES
def test_layouts(handle: bool) -> None:
    """Every layout knob gives the same results; chains are what the knobs say."""

    async def body() -> None:
        rig = await ready_rig(handle)
        d = rig.drv
        exp = ExpectedDisk()
        rng = random.Random(9)
        reqs = [
            BlkRequest(OUT, 3, data=rng.randbytes(2048), segments=[1, 0, 1500, 547],
                       offsets=[4095, 0, 3000, 17]),
            BlkRequest(OUT, 9, data=rng.randbytes(1024), header_with_data=True,
                       segments=[100, 924], offsets=[4000, 5]),
            BlkRequest(IN, 2, length=4096, segments=[4096], offsets=[2049]),
            BlkRequest(IN, 8, length=1536, status_with_data=True, segments=[1000, 536],
                       offsets=[3333, 4090]),
            BlkRequest(IN, 1, length=512, header_segments=[1, 0, 15]),
            BlkRequest(FLUSH, header_segments=[8, 8]),
            BlkRequest(GET_ID, length=7, status_with_data=True),
            BlkRequest(GET_ID, length=40),
            BlkRequest(OUT, 0, data=b""),  # zero data bytes: OK, nothing written
        ]
        tokens = [await d.submit(q) for q in reqs]
        chain0 = []
        i = d._inflight[tokens[0]].head
        while True:
            _addr, length, flags, nxt = d.read_desc(i)
            chain0.append((length, flags))
            if not flags & spec.VIRTQ_DESC_F_NEXT:
                break
            i = nxt
        n, w = spec.VIRTQ_DESC_F_NEXT, spec.VIRTQ_DESC_F_WRITE
        assert chain0 == [(16, n), (1, n), (0, n), (1500, n), (547, n), (1, w)]
        await d.kick()
        results = await d.wait(tokens)
        check_results(exp, reqs, results)
        assert bytes(rig.dev.disk) == bytes(exp.data)
        assert results[6].data == spec.DEVICE_SERIAL[:7]
        assert results[7].data is not None and results[7].data[:20] == spec.DEVICE_SERIAL

    run(body)


@sync
async def test_layout_validation() -> None:
    rig = await make_rig(False)
    d = rig.drv
    with pytest.raises(RuntimeError, match="init"):
        await d.submit(BlkRequest(FLUSH))
    await d.init()
    bad = [
        BlkRequest(IN, length=512, segments=[500]),
        BlkRequest(IN, length=512, segments=[256, 256], offsets=[0]),
        BlkRequest(IN, length=512, header_with_data=True),
        BlkRequest(OUT, data=b"x" * 512, status_with_data=True),
        BlkRequest(FLUSH, header_segments=[8, 7]),
        BlkRequest(OUT, data=b"x", length=3),
    ]
    for q in bad:
        with pytest.raises(ValueError):
            await d.submit(q)
    assert d.free_descriptors == d.queue_size and not d.in_flight


@MODES
@sync
async def test_scattered_multi_page_buffers(handle: bool) -> None:
    rig = await ready_rig(handle, seed=4)
    d = rig.drv
    data = random.Random(2).randbytes(16 * 512)
    t = await d.submit(BlkRequest(OUT, 16, data=data, offsets=[1234]))
    rec = d._inflight[t]
    pages = rec.pieces[1].buf.used_pages
    assert len(pages) == 3
    if handle:  # scattered frames behind consecutive grant refs
        assert any(b != a + 1 for a, b in itertools.pairwise(pages))
        ref, off = spec.split_handle(rec.pieces[1].handle)
        assert off == 1234
        for k, pfn in enumerate(pages):
            e = rig.dev.grants[ref + k]
            assert (e.frame, e.domid, e.readonly) == (pfn, DOMID, True)
    else:
        assert pages == list(range(pages[0], pages[0] + 3))
    await d.kick()
    (res,) = await d.wait([t])
    assert res.ok and bytes(rig.dev.disk[16 * 512 : 32 * 512]) == data
    # the device read the data page by page from those frames
    reads = {t.addr >> 12 for t in rig.dev.transactions if t.kind == "R"}
    assert set(pages) <= reads
    assert await d.read(16, 16) == data


# --- rings ----------------------------------------------------------------------------------------
@MODES
@sync
async def test_ring_wrap_small_queue(handle: bool) -> None:
    rig = await ready_rig(handle, queue_num_max=4)
    d = rig.drv
    exp = ExpectedDisk()
    reqs = [replace(q, header_segments=None)
            for q in random_requests(11, 60, d.capacity, max_segments=1, errors=False)]
    # 3+ descriptors per request in a 4-entry ring: one request per kick
    results = await d.run_batch(reqs)
    check_results(exp, reqs, results)
    one_by_one = [replace(q, header_segments=None)
                  for q in random_requests(12, 30, d.capacity, max_segments=1)]
    for q in one_by_one:
        check_results(exp, [q], [await d.request(q)])
    assert d.avail_idx == 90 == rig.dev.last_avail_idx == d.last_used
    assert bytes(rig.dev.disk) == bytes(exp.data)


@sync
async def test_queue_full() -> None:
    rig = await ready_rig(True, queue_num_max=8)
    d = rig.drv
    await d.submit(BlkRequest(IN, 0, length=512))
    await d.submit(BlkRequest(IN, 0, length=512, segments=[256, 256]))
    before = (rig.alloc.free_count, rig.dma.free_refs)  # type: ignore[attr-defined]
    with pytest.raises(QueueFull, match="1 free"):
        await d.submit(BlkRequest(IN, 0, length=512))
    assert (rig.alloc.free_count, rig.dma.free_refs) == before  # type: ignore[attr-defined]
    await d.kick()
    res = await d.wait()
    assert [r.ok for r in res] == [True, True] and d.free_descriptors == 8


def test_16_bit_index_wrap() -> None:
    """More than 65536 requests: avail.idx and used.idx wrap (flushes in batches of 256)."""

    async def body() -> None:
        rig = await make_rig(False)
        d = rig.drv
        await d.init(queue_size=256)
        rig.dev.clear_records()
        total = 0
        reqs = [BlkRequest(FLUSH) for _ in range(85)]  # 3 descriptors each
        while total < 65536 + 300:
            results = await d.run_batch(reqs)
            assert all(r.ok for r in results)
            total += len(results)
            rig.dev.transactions.clear()
        assert d.avail_idx == total & 0xFFFF == rig.dev.used_idx == d.last_used
        await d.write(1, b"\xab" * 512)
        assert await d.read(1) == b"\xab" * 512

    run(body)


# --- random workloads -----------------------------------------------------------------------------
@pytest.mark.parametrize("handle,width,no_irq", [
    (False, 64, False), (True, 64, False), (True, 32, True), (True, 128, False),
    (False, 128, True),
])
@sync
async def test_random_workload(handle: bool, width: int, no_irq: bool) -> None:
    rig = await ready_rig(handle, seed=width, data_width=width, no_interrupt=no_irq)
    d = rig.drv
    exp = ExpectedDisk()
    rng = random.Random(width * 2 + handle)
    reqs = random_requests(rng.randrange(1 << 30), 400, d.capacity)
    done = 0
    while done < len(reqs):  # mixed batch sizes, some single requests
        n = rng.choice([1, 2, 5, 40, 150])
        batch = reqs[done : done + n]
        check_results(exp, batch, await d.run_batch(batch))
        done += len(batch)
    assert bytes(rig.dev.disk) == bytes(exp.data)
    assert rig.dev.faults == []
    if no_irq:
        assert not rig.dev.irq
    # nothing leaked
    assert d.free_descriptors == d.queue_size
    if handle:
        assert len(rig.dma.mappings) == 3  # type: ignore[attr-defined]


@sync
async def test_run_batch_splits_on_grant_exhaustion() -> None:
    rig = await ready_rig(True, entries=40)
    d = rig.drv
    exp = ExpectedDisk()
    # each request: header + 2 pages of data + status = 4 refs; 29 refs left after rings
    reqs = [BlkRequest(OUT, 8 * k, data=bytes([k]) * 4096, offsets=[100])
            for k in range(16)]
    check_results(exp, reqs, await d.run_batch(reqs))
    assert bytes(rig.dev.disk) == bytes(exp.data)
    with pytest.raises(OutOfGrantRefs):
        await d.submit(BlkRequest(IN, 0, length=30 * 4096))
    assert not d.in_flight and d.free_descriptors == d.queue_size


def test_deterministic_transactions() -> None:
    """Same seeds and calls, same bus transactions; another seed moves things."""

    async def trace(seed: int) -> list[Any]:
        rig = await make_rig(True, seed=seed)
        await rig.drv.init()
        reqs = random_requests(77, 120, rig.drv.capacity)
        await rig.drv.run_batch(reqs[:60])
        for q in reqs[60:70]:
            await rig.drv.request(q)
        await rig.drv.run_batch(reqs[70:])
        return [t.key() for t in rig.dev.transactions]

    async def body() -> None:
        a, b, c = await trace(1), await trace(1), await trace(2)
        assert a == b
        assert a != c

    run(body)


@sync
async def test_wait_variants() -> None:
    rig = await ready_rig(False)
    d = rig.drv
    t = [await d.submit(BlkRequest(IN, k, length=512)) for k in range(5)]
    await d.kick()
    two = await d.wait(2)
    assert [r.token for r in two] == t[:2]
    # out of order by token, and waiting on something already reaped
    later = await d.wait([t[4], t[2]])
    assert [r.token for r in later] == [t[4], t[2]]
    (r3,) = await d.wait(None)
    assert r3.token == t[3] and r3.request.sector == 3
    with pytest.raises(ValueError, match="neither"):
        await d.wait([t[0]])
    with pytest.raises(ValueError):
        await d.wait(1)


@sync
async def test_no_kick_times_out() -> None:
    for no_irq in (False, True):
        rig = await make_rig(False, no_interrupt=no_irq, poll_limit=10)
        await rig.drv.init()
        await rig.drv.submit(BlkRequest(FLUSH))
        with pytest.raises(TimeoutError, match="kicked"):
            await rig.drv.wait()


# --- features -------------------------------------------------------------------------------------
@sync
async def test_feature_refusals() -> None:
    v1 = 1 << spec.VIRTIO_F_VERSION_1
    ap = 1 << spec.VIRTIO_F_ACCESS_PLATFORM
    flush = 1 << spec.VIRTIO_BLK_F_FLUSH
    cases = [
        (True, v1 | flush),  # handle mode requires ACCESS_PLATFORM
        (False, flush),  # no VERSION_1
        (False, v1 | 1 << 40),  # not offered
        (False, v1 | ap),  # ACCESS_PLATFORM not offered in GPA mode
    ]
    for handle, feats in cases:
        rig = await make_rig(handle)
        with pytest.raises(FeaturesRefused, match="FEATURES_OK"):
            await rig.drv.init(features=feats)
        st = await rig.drv.device_status()
        assert st & spec.STATUS_FAILED and not st & spec.STATUS_FEATURES_OK
        assert not rig.drv.ready
        # recoverable: a normal init afterwards works
        await rig.drv.init()
        assert await rig.drv.get_id() == spec.DEVICE_SERIAL
    # minimal feature set without FLUSH: accepted, flush() then refuses locally
    rig = await make_rig(False)
    await rig.drv.init(features=v1)
    with pytest.raises(RuntimeError, match="FLUSH"):
        await rig.drv.flush()
    await rig.drv.read(0)


@sync
async def test_grant_dma_needs_access_platform() -> None:
    rig = await make_rig(False, dma="grant")  # device in GPA mode: no ACCESS_PLATFORM
    with pytest.raises(InitError, match="ACCESS_PLATFORM"):
        await rig.drv.init()
    assert await rig.drv.device_status() & spec.STATUS_FAILED


@sync
async def test_identity_dma_against_handle_mode_faults() -> None:
    rig = await make_rig(True, dma="identity")
    await rig.drv.init()  # ACCESS_PLATFORM accepted, but addresses are GPAs
    with pytest.raises(DeviceFault, match="needs reset"):
        await rig.drv.flush()
    f = await rig.hv.fault()
    assert f.latched and f.cause == spec.FAULT_NOT_HANDLE and f.addr == rig.drv.avail_addr


class _Lying:
    """A link whose guest port answers one register with a wrong value."""

    def __init__(self, inner: ReferenceDevice, offset: int, value: int) -> None:
        self.inner, self.offset, self.value = inner, offset, value
        self.guest = self
        self.hv = inner.hv
        self.mem = inner.mem

    async def read32(self, off: int) -> int:
        return self.value if off == self.offset else await self.inner.guest.read32(off)

    async def write32(self, off: int, v: int) -> None:
        await self.inner.guest.write32(off, v)

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        await self.inner.wait_irq(timeout_cycles)


def test_bring_up_errors_are_the_vocabulary_s() -> None:
    """One exception type per failure everywhere: the driver raises models.virtio's."""
    from models import virtio

    assert InitError is virtio.InitError and FeaturesRefused is virtio.FeaturesRefused


@pytest.mark.parametrize("offset,value,msg", [
    (spec.MMIO_MAGIC_VALUE, 0x12345678, "MagicValue"),
    (spec.MMIO_VERSION, 1, "legacy"),
    (spec.MMIO_DEVICE_ID, 0, "placeholder"),
    (spec.MMIO_DEVICE_ID, 1, "block"),
    (spec.MMIO_QUEUE_NUM_MAX, 0, "QueueNumMax"),
])
@sync
async def test_probe_errors(offset: int, value: int, msg: str) -> None:
    rig = await make_rig(False)
    link = _Lying(rig.dev, offset, value)
    drv = VirtioBlkDriver(link, rig.dma, rig.alloc)  # type: ignore[arg-type]
    with pytest.raises(InitError, match=msg):
        await drv.init()


# --- faults and recovery --------------------------------------------------------------------------
@pytest.mark.parametrize("no_irq", [False, True])
@sync
async def test_revoked_grant_faults_then_recovers(no_irq: bool) -> None:
    rig = await make_rig(True, no_interrupt=no_irq)
    d = rig.drv
    dma = rig.dma
    assert isinstance(dma, GrantDma)
    await d.init()
    pages_free, refs_free = rig.alloc.free_count, dma.free_refs
    good = await d.submit(BlkRequest(IN, 0, length=1024))
    bad = await d.submit(BlkRequest(IN, 4, length=1024))
    handle = d._inflight[bad].pieces[1].handle
    assert handle is not None
    ref, _ = spec.split_handle(handle)
    await rig.hv.revoke(ref)  # the hypervisor pulls the data grant before the kick
    await d.kick()
    (r,) = await d.wait([good])  # completed before the fault: still delivered
    assert r.ok and r.data == spec.ramdisk_init(1024)
    with pytest.raises(DeviceFault) as ei:
        await d.wait([bad])
    assert ei.value.in_flight == [bad]
    assert ei.value.status & spec.STATUS_DEVICE_NEEDS_RESET
    with pytest.raises(DeviceFault):  # and again, without hanging
        await d.wait()
    f = await rig.hv.fault()
    assert (f.latched, f.cause, f.addr, f.count) == (True, spec.FAULT_NOT_PERMITTED,
                                                     handle, 1)
    await d.reset()
    assert await d.device_status() == 0
    assert rig.alloc.free_count == rig.alloc.npages  # rings and slots too
    assert len(dma.mappings) == 0
    await rig.hv.clear_fault()
    assert not (await rig.hv.fault()).latched
    await d.init()
    assert (rig.alloc.free_count, dma.free_refs) == (pages_free, refs_free)
    assert await d.read(4, 2) == spec.ramdisk_init(3072)[2048:]
    await d.write(4, b"\x11" * 512)
    assert bytes(rig.dev.disk[2048:2560]) == b"\x11" * 512
    assert (await rig.hv.fault()).count == 1


def test_readonly_grant_violation_via_hooks() -> None:
    """Hand-built chain whose status descriptor points at a read-only grant."""

    async def body() -> None:
        rig = await ready_rig(True, queue_num_max=8)
        d = rig.drv
        hdr, h_hdr = await d.map_buffer(16, TO_DEVICE)
        hdr.write(0, bytes(16))  # T_IN sector 0
        st, h_st = await d.map_buffer(1, TO_DEVICE)  # wrong: device must write it
        d.write_desc(0, h_hdr, 16, spec.VIRTQ_DESC_F_NEXT, 1)
        d.write_desc(1, h_st, 1, spec.VIRTQ_DESC_F_WRITE, 0)
        d.publish(0)
        await d.kick()
        assert await d.device_status() & spec.STATUS_DEVICE_NEEDS_RESET
        f = await rig.hv.fault()
        assert (f.cause, f.addr) == (spec.FAULT_READONLY, h_st)
        await d.unmap_buffer(hdr, h_hdr)
        await d.unmap_buffer(st, h_st)
        await d.reset()
        await rig.hv.clear_fault()
        await d.init()
        buf, h = await d.map_buffer(1, FROM_DEVICE)
        never = spec.make_handle(500, 0x10)  # a reference nobody granted
        d.write_desc(0, never, 16, spec.VIRTQ_DESC_F_NEXT, 1)
        d.write_desc(1, h, 1, spec.VIRTQ_DESC_F_WRITE, 0)
        d.publish(0)
        await d.kick()
        f = await rig.hv.fault()
        assert (f.cause, f.addr) == (spec.FAULT_NOT_PERMITTED, never)
        await d.unmap_buffer(buf, h)

    run(body)


@sync
async def test_bad_ring_hooks() -> None:
    rig = await ready_rig(False, queue_num_max=8)
    d = rig.drv
    d.set_avail_idx(9)  # 9 pending in an 8-entry ring
    await d.kick()
    f = await rig.hv.fault()
    assert (f.cause, f.addr) == (spec.FAULT_BAD_RING, 9)
    await d.reset()
    await rig.hv.clear_fault()
    await d.init()
    await d.set_queue_addresses(d.desc_addr + 8, d.avail_addr, d.used_addr)
    t = await d.submit(BlkRequest(FLUSH))
    await d.kick()
    with pytest.raises(DeviceFault):
        await d.wait([t])
    f = await rig.hv.fault()
    assert (f.cause, f.addr) == (spec.FAULT_BAD_RING, d.desc_addr + 8)


@sync
async def test_bus_error_faults() -> None:
    armed = [False]
    rig = await ready_rig(False, bus_error=lambda txn: armed[0] and txn.kind == "W")
    d = rig.drv
    armed[0] = True
    with pytest.raises(DeviceFault):
        await d.read(0)
    assert (await rig.hv.fault()).cause == spec.FAULT_BUS_ERROR
    armed[0] = False
    await d.reset()
    await d.init()
    assert await d.read(0) == spec.ramdisk_init(512)


def test_hand_built_chain_completes() -> None:
    """The low-level hooks drive a request without submit(); take_used_raw reaps it."""

    async def body() -> None:
        rig = await ready_rig(True, queue_num_max=8)
        d = rig.drv
        hdr, h_hdr = await d.map_buffer(16, TO_DEVICE, offset=4090)  # header crosses a page
        hdr.write(0, bytes([IN, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]))
        data, h_data = await d.map_buffer(513, FROM_DEVICE, offset=7)  # data + status byte
        d.write_desc(5, h_hdr, 16, spec.VIRTQ_DESC_F_NEXT, 2)
        d.write_desc(2, h_data, 513, spec.VIRTQ_DESC_F_WRITE, 0)
        d.publish(5)
        await d.kick()
        assert d.take_used_raw() == [(5, 513)]
        assert data.read() == spec.ramdisk_init(1536)[1024:] + bytes([spec.VIRTIO_BLK_S_OK])
        await d.unmap_buffer(hdr, h_hdr)
        await d.unmap_buffer(data, h_data)
        assert await d.read(2) == spec.ramdisk_init(1536)[1024:]  # indices stay in step

    run(body)
