"""Issue 17's features in the driver model, against the reference device
(models.device.ReferenceDevice) in GPA and handle mode: negotiation, the configuration fields,
indirect tables, many-segment requests, EVENT_IDX, the limits, DISCARD and WRITE_ZEROES.

Expected values come from the specification (virtio 1.2 sections 2.7.5.3, 2.7.7, 2.7.10, 5.2)
and the contract (docs/architecture.md, models/features.py), through
:class:`sw.workload.ExpectedDisk`; none from the device under test.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from models import spec
from models.device import ReferenceDevice
from models.features import Features
from sw.dma import GrantDma
from sw.driver import (
    ALL_FEATURES,
    DWZ_SEGMENT,
    BlkError,
    BlkRequest,
    QueueFull,
    dwz_request,
    vring_need_event,
)
from sw.workload import ExpectedDisk, page_segments_request, random_feature_requests

from .test_sw_driver import MODES, check_results, make_rig, ready_rig, sync

IN, OUT = spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT
DISCARD, WZ = spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES
EVENT_IDX, INDIRECT = spec.VIRTIO_RING_F_EVENT_IDX, spec.VIRTIO_F_INDIRECT_DESC
KIB64 = 64 * 1024


def bit(b: int) -> int:
    return 1 << b


# --- negotiation and configuration ------------------------------------------------------------
@MODES
@sync
async def test_negotiation_choices(handle: bool) -> None:
    ap = bit(spec.VIRTIO_F_ACCESS_PLATFORM) if handle else 0
    base = bit(spec.VIRTIO_F_VERSION_1) | bit(spec.VIRTIO_BLK_F_FLUSH) | ap
    rig = await make_rig(handle, queue_num_max=64)
    d = rig.drv
    await d.init()
    assert d.features == base
    await d.init(features="all")
    assert d.features == Features().offered(64) | ap  # every offered bit the driver knows
    assert rig.dev.driver_features == d.features
    await d.init(features={INDIRECT})  # no FLUSH unless asked
    assert d.features == bit(spec.VIRTIO_F_VERSION_1) | ap | bit(INDIRECT)
    with pytest.raises(RuntimeError, match="FLUSH"):
        await d.flush()
    with pytest.raises(ValueError, match="does not implement"):
        await d.init(features={40})
    # a build that offers none of them: "all" is the foundation's set
    rig = await make_rig(handle, queue_num_max=64, features=Features.none())
    await rig.drv.init(features="all")
    assert rig.drv.features == base


@MODES
@pytest.mark.parametrize("feats", [Features(), Features(seg_max=5, size_max=8192),
                                   Features(discard=False, blk_size=False)],
                         ids=["default", "small", "nodiscard"])
@sync
async def test_config_fields(handle: bool, feats: Features) -> None:
    """The driver reads the fields of what it negotiated (section 5.2.4 offsets), 0 for the
    rest; the values are models/features.py's."""
    rig = await ready_rig(handle, queue_num_max=32, features=feats)
    lim = rig.drv.limits
    assert lim.seg_max == lim.size_max == lim.max_discard_sectors == 0  # not negotiated
    await rig.drv.init(features="all")
    lim = rig.drv.limits
    want = feats.params(32, spec.DEFAULT_DISK_BYTES)
    for name in ("seg_max", "size_max", "blk_size", "max_discard_sectors", "max_discard_seg",
                 "discard_sector_alignment", "max_write_zeroes_sectors",
                 "max_write_zeroes_seg"):
        assert getattr(lim, name) == want[name], name
    assert lim.write_zeroes_may_unmap == 0
    if feats == Features():  # min(128, QueueNumMax - 2), 64 KiB
        assert (lim.seg_max, lim.size_max) == (30, spec.DEFAULT_SIZE_MAX)
    assert rig.drv.capacity == spec.DEFAULT_DISK_BYTES // 512


# --- indirect tables and many segments ---------------------------------------------------------
def chain_of(d: Any, head: int) -> list[tuple[int, int, int, int]]:
    out, i = [], head
    while True:
        desc = d.read_desc(i)
        out.append(tuple(desc))
        if not desc[2] & spec.VIRTQ_DESC_F_NEXT:
            return out
        i = desc[3]


@MODES
@pytest.mark.parametrize("op", ["read", "write"])
@sync
async def test_64k_as_16_pages_direct_and_indirect(handle: bool, op: str) -> None:
    """A 64 KiB request as 16 page-sized segments: 18 descriptors in the ring, or one INDIRECT
    descriptor naming an 18-entry table the driver mapped device-readable (a read-only grant
    in handle mode); same completions, same disk."""
    rig = await ready_rig(handle, seed=3)
    d = rig.drv
    await d.init(features="all")
    exp = ExpectedDisk()
    rng = random.Random(5)
    for indirect in (False, True):
        data = rng.randbytes(KIB64) if op == "write" else None
        req = page_segments_request(op, 0, KIB64, indirect=indirect, data=data)
        t = await d.submit(req)
        rec = d._inflight[t]
        chain = chain_of(d, rec.head)
        if not indirect:
            assert len(chain) == 18 and rec.table is None
            assert [c[1] for c in chain] == [16] + [4096] * 16 + [1]
        else:
            assert len(chain) == 1 and d.free_descriptors == d.queue_size - 1
            addr, length, flags, _nxt = chain[0]
            assert (length, flags) == (18 * 16, spec.VIRTQ_DESC_F_INDIRECT)
            assert rec.table is not None and addr == rec.table.handle
            assert bool(addr >> 63) == handle
            table = rec.table.buf.read()
            entries = [tuple(spec_desc) for spec_desc in
                       (DESC_unpack(table, 16 * k) for k in range(18))]
            assert [e[1] for e in entries] == [16] + [4096] * 16 + [1]
            w, n = spec.VIRTQ_DESC_F_WRITE, spec.VIRTQ_DESC_F_NEXT
            data_flags = (w if op == "read" else 0) | n
            assert [e[2] for e in entries] == [n] + [data_flags] * 16 + [w]
            assert [e[3] for e in entries] == [*range(1, 18), 0]
            assert [e[0] for e in entries] == [p.handle for p in rec.pieces]
            if handle:  # the table is granted read-only to the device's domain
                ref, off = spec.split_handle(addr)
                g = rig.dev.grants[ref]
                assert off == 0 and g.readonly and g.frame == rec.table.buf.pages[0]
        rig.dev.clear_records()
        await d.notify()
        (res,) = await d.wait([t])
        check_results(exp, [req], [res])
        reads = {tx.addr >> 12 for tx in rig.dev.transactions if tx.kind == "R"}
        if indirect:  # the device read the table through its handle
            assert rec.table.buf.pages[0] in reads
        assert bytes(rig.dev.disk) == bytes(exp.data)
    assert d.free_descriptors == d.queue_size and not d.in_flight
    if handle:
        assert isinstance(rig.dma, GrantDma) and len(rig.dma.mappings) == 3
    assert rig.dev.faults == []


def DESC_unpack(data: bytes, off: int) -> Any:
    from models import virtio

    return virtio.DESC.unpack(data, off)


@sync
async def test_indirect_needs_negotiation_and_one_ring_slot() -> None:
    feats = Features(seg_max=0)  # no SEG_MAX: only the queue bounds a table
    rig = await ready_rig(True, queue_num_max=4, features=feats)
    d = rig.drv
    with pytest.raises(ValueError, match="INDIRECT_DESC"):
        await d.submit(BlkRequest(IN, 0, length=512, indirect=True))
    await d.init(features="all")
    # 4 ring slots: four requests of 4 descriptors each fit only as indirect tables
    reqs = [page_segments_request("read", 16 * k, 2 * 4096, indirect=None) for k in range(4)]
    tokens = [await d.submit(q) for q in reqs]
    assert d.free_descriptors == 0
    with pytest.raises(QueueFull):
        await d.submit(reqs[0])
    await d.notify()
    res = await d.wait(tokens)
    check_results(ExpectedDisk(features=feats, queue_num_max=4), reqs, res)
    # a table longer than the queue is refused (docs/architecture.md: a fault otherwise)
    with pytest.raises(ValueError, match="longer than the queue"):
        await d.submit(BlkRequest(IN, 0, length=2048, segments=[512] * 4, indirect=True))


# --- limits -------------------------------------------------------------------------------------
@MODES
@sync
async def test_limits_refused_or_ioerr(handle: bool) -> None:
    feats = Features(seg_max=4, size_max=4096)
    rig = await ready_rig(handle, features=feats)
    d = rig.drv
    await d.init(features="all")
    assert (d.limits.seg_max, d.limits.size_max) == (4, 4096)
    exp = ExpectedDisk(features=feats)
    ok = [BlkRequest(IN, 0, length=4 * 4096, segments=[4096] * 4),
          BlkRequest(OUT, 8, data=bytes(4096), segments=[4096], indirect=True)]
    over = [BlkRequest(IN, 0, length=5 * 4096, segments=[4096] * 5),  # 5 data descriptors
            BlkRequest(IN, 0, length=8192),  # one 8 KiB descriptor
            BlkRequest(OUT, 0, data=bytes(4096), header_with_data=True),  # 4112 bytes
            BlkRequest(IN, 0, length=2048, segments=[512] * 4, header_segments=[8, 8]),
            BlkRequest(IN, 0, length=100)]  # BLK_SIZE: not whole sectors
    for q in over:
        with pytest.raises(ValueError):
            await d.submit(q)
    assert not d.in_flight and d.free_descriptors == d.queue_size
    sent = ok + [BlkRequest(**{**q.__dict__, "unchecked": True}) for q in over]
    for indirect in (False, True):
        reqs = [BlkRequest(**{**q.__dict__, "indirect": indirect}) for q in sent]
        res = await d.run_batch(reqs)
        check_results(exp, reqs, res)
        assert [r.status for r in res] == [0, 0] + [spec.VIRTIO_BLK_S_IOERR] * 5
    assert bytes(rig.dev.disk) == bytes(exp.data) and rig.dev.faults == []


# --- DISCARD and WRITE_ZEROES ------------------------------------------------------------------
@MODES
@sync
async def test_discard_and_write_zeroes(handle: bool) -> None:
    rig = await ready_rig(handle)
    d = rig.drv
    with pytest.raises(RuntimeError, match="DISCARD"):
        await d.discard(0, 8)
    await d.init(features="all")
    pattern = bytes(range(256)) * 32
    await d.write(8, pattern)
    await d.discard(9, 2)
    assert await d.read(8, 16) == pattern[:512] + bytes(1024) + pattern[1536:]
    await d.write_zeroes(40, 3, unmap=True)
    await d.write_zeroes(50, 0)  # zero sectors: OK, nothing changes
    init = spec.ramdisk_init(spec.DEFAULT_DISK_BYTES)
    assert await d.read(39, 5) == (init[39 * 512 : 40 * 512] + bytes(1536)
                                   + init[43 * 512 : 44 * 512])
    assert await d.read(50) == init[50 * 512 : 51 * 512]
    cap = d.capacity
    with pytest.raises(BlkError, match="IOERR"):
        await d.discard(cap - 1, 2)  # beyond the disk
    res = await d.request(dwz_request(DISCARD, [(0, 1, spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]))
    assert res.status == spec.VIRTIO_BLK_S_UNSUPP  # section 5.2.6.2
    res = await d.request(dwz_request(WZ, [(0, 1, 2)]))
    assert res.status == spec.VIRTIO_BLK_S_UNSUPP  # an unknown flag
    two = dwz_request(WZ, [(0, 1, 0), (4, 1, 0)])
    with pytest.raises(ValueError, match="max_write_zeroes_seg"):
        await d.submit(two)
    with pytest.raises(ValueError, match="max_discard_sectors"):
        await d.submit(dwz_request(DISCARD, [(0, cap + 1, 0)]))
    two.unchecked = True
    res = await d.request(two)
    assert res.status == spec.VIRTIO_BLK_S_IOERR  # max_write_zeroes_seg = 1
    assert DWZ_SEGMENT.size == spec.DWZ_SEGMENT_BYTES
    assert rig.dev.faults == []


def test_expected_disk_follows_the_build() -> None:
    """Type 11 is UNSUPP on a build without DISCARD, IOERR without its segment on one with."""
    bare = BlkRequest(DISCARD, 3)
    assert ExpectedDisk(features=Features.none()).expect(bare).status == spec.VIRTIO_BLK_S_UNSUPP
    assert ExpectedDisk().expect(bare).status == spec.VIRTIO_BLK_S_IOERR


# --- EVENT_IDX ----------------------------------------------------------------------------------
def test_vring_need_event() -> None:
    """Linux include/uapi/linux/virtio_ring.h: event in [old, new) modulo 2**16."""
    assert vring_need_event(5, 6, 5) and not vring_need_event(5, 5, 4)
    assert vring_need_event(0xFFFF, 2, 0xFFFE) and not vring_need_event(2, 2, 0xFFFE)
    assert not vring_need_event(7, 7, 7)


class LazyLink:
    """The reference device, but a notify runs only when the driver waits for an interrupt:
    a device that is busy while the driver adds requests (the driver's kick suppression and
    used_event then matter, as they do on the RTL)."""

    def __init__(self, dev: ReferenceDevice) -> None:
        self.dev, self.hv, self.mem = dev, dev.hv, dev.mem
        self.guest = self
        self.pending = 0
        self.notifies = 0

    async def read32(self, off: int) -> int:
        return await self.dev.guest.read32(off)

    async def write32(self, off: int, value: int) -> None:
        if off == spec.MMIO_QUEUE_NOTIFY:
            self.pending += 1
            self.notifies += 1
            return
        await self.dev.guest.write32(off, value)

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        if self.pending:
            self.pending = 0
            await self.dev.guest.write32(spec.MMIO_QUEUE_NOTIFY, 0)
        await self.dev.wait_irq(timeout_cycles)


async def lazy_rig(handle: bool, feats: Any, policy: str = "enable_cb") -> Any:
    rig = await make_rig(handle, event_policy=policy)
    link = LazyLink(rig.dev)
    rig.drv.link = link
    rig.drv.regs = link
    await rig.drv.init(features=feats)
    return rig, link


@MODES
@pytest.mark.parametrize("policy", ["enable_cb", "delayed"])
@sync
async def test_event_idx_used_event_and_kick_suppression(handle: bool, policy: str) -> None:
    rig, link = await lazy_rig(handle, {spec.VIRTIO_BLK_F_FLUSH, EVENT_IDX}, policy)
    d = rig.drv
    assert d.negotiated(EVENT_IDX)
    exp = ExpectedDisk()
    reqs = [BlkRequest(IN, k, length=512) for k in range(16)]
    a = [await d.submit(q) for q in reqs[:8]]
    assert await d.notify()  # avail_event 0 in [0, 8): the idle device wants a notify
    b = [await d.submit(q) for q in reqs[8:]]
    # the device has not run yet (avail_event still 0): no notify for [8, 16) (section 2.7.10)
    assert not await d.notify() and d.kicks_suppressed == 1
    res = await d.wait(a + b)
    check_results(exp, reqs, res)
    # used_event as Linux writes it before sleeping: last_used (virtqueue_enable_cb), or
    # last_used + 3/4 of the 16 outstanding (virtqueue_enable_cb_delayed)
    assert d.used_event() == (0 if policy == "enable_cb" else 12)
    assert (d.kicks, link.notifies, d.interrupts) == (1, 1, 1)
    # the device went idle and published avail_event = 16: the next request notifies
    assert d.avail_event() == 16
    t = await d.submit(reqs[0])
    assert await d.notify()
    await d.wait([t])
    assert d.used_event() == 16 and (d.kicks, d.interrupts) == (2, 2)


@sync
async def test_event_idx_suppresses_interrupts_the_driver_did_not_ask_for() -> None:
    """used_event beyond the round's entries: the device does not interrupt (models the
    device's side of section 2.7.10 as the driver relies on it)."""
    rig, _link = await lazy_rig(False, "all")
    d = rig.drv
    t = [await d.submit(BlkRequest(IN, k, length=512)) for k in range(4)]
    await d.kick()
    d.set_used_event(10)
    await rig.dev.guest.write32(spec.MMIO_QUEUE_NOTIFY, 0)  # the device runs its round now
    assert rig.dev.used_idx == 4 and not rig.dev.irq
    res = await d.wait(t)  # all four complete: reaped without sleeping
    assert all(r.ok for r in res) and d.interrupts == 0


@MODES
@sync
async def test_no_event_idx_kicks_every_batch(handle: bool) -> None:
    rig, link = await lazy_rig(handle, None)
    d = rig.drv
    a = [await d.submit(BlkRequest(IN, k, length=512)) for k in range(4)]
    assert await d.notify()
    b = [await d.submit(BlkRequest(IN, k, length=512)) for k in range(4)]
    assert await d.notify()
    await d.wait(a + b)
    assert (d.kicks, link.notifies, d.kicks_suppressed, d.interrupts) == (2, 2, 0, 1)
    assert d.used_event() == 0  # never written without EVENT_IDX


@sync
async def test_event_idx_polling_keeps_interrupts_off() -> None:
    rig = await make_rig(True, no_interrupt=True)
    await rig.drv.init(features="all")
    reqs = [BlkRequest(IN, k, length=1024) for k in range(20)]
    check_results(ExpectedDisk(), reqs, await rig.drv.run_batch(reqs))
    assert not rig.dev.irq and rig.drv.interrupts == 0


# --- everything at once -------------------------------------------------------------------------
@MODES
@pytest.mark.parametrize("policy", ["enable_cb", "delayed"])
@sync
async def test_random_feature_workload(handle: bool, policy: str) -> None:
    rig = await ready_rig(handle, seed=7, event_policy=policy)
    d = rig.drv
    await d.init(features="all")
    assert d.features >> INDIRECT & 1 and d.features >> EVENT_IDX & 1
    exp = ExpectedDisk()
    rng = random.Random(11 + handle)
    reqs = random_feature_requests(rng.randrange(1 << 30), 300, d.capacity)
    kinds = {q.type for q in reqs}
    assert {IN, OUT, DISCARD, WZ} <= kinds
    done = 0
    while done < len(reqs):
        batch = reqs[done : done + rng.choice([1, 3, 8, 30])]
        check_results(exp, batch, await d.run_batch(batch))
        done += len(batch)
    assert bytes(rig.dev.disk) == bytes(exp.data)
    assert rig.dev.faults == [] and d.free_descriptors == d.queue_size
    if handle:
        assert len(rig.dma.mappings) == 3  # type: ignore[attr-defined]
    assert {INDIRECT, EVENT_IDX} <= ALL_FEATURES
