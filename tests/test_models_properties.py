"""Property tests of the reference device on random grant tables, chains and requests."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from models import spec
from models.features import Features
from models.grant import GrantEntry
from verif.harness import make as _make


def make(**kw):
    """The harness's device and driver, built as the foundation's device (``Features.none()``)
    unless ``features`` is given: these tests are the foundation's behaviour."""
    return _make(**{"features": Features.none(), **kw})

ENTRIES = 32
DOMID = 1
POOL = list(range(8, 24))  # frames the random grants point at (rings live in frames 1..3)
MEM = 32 << 12

FLAGS = st.sampled_from(
    [spec.GTF_permit_access] * 24
    + [
        *[spec.GTF_permit_access | spec.GTF_readonly] * 3,
        spec.GTF_invalid,
        spec.GTF_accept_transfer,
        3,
        spec.GTF_readonly,
    ]
)
GRANT = st.tuples(
    FLAGS,
    st.sampled_from([DOMID] * 19 + [2]),
    st.sampled_from([*POOL, *POOL, 0xFFFFF]),
)
_IN_TABLE = st.tuples(st.integers(3, ENTRIES - 1), st.integers(0, 4095))
_ANY_REF = st.tuples(st.integers(3, ENTRIES + 1), st.integers(0, 4095))
ADDR = st.one_of(  # mostly a handle inside the table; sometimes out of range or not a handle
    _IN_TABLE.map(lambda t: spec.make_handle(*t)),
    _IN_TABLE.map(lambda t: spec.make_handle(*t)),
    _IN_TABLE.map(lambda t: spec.make_handle(*t)),
    _IN_TABLE.map(lambda t: spec.make_handle(*t)),
    _ANY_REF.map(lambda t: spec.make_handle(*t)),
    st.integers(0, MEM),
)
READABLE = st.tuples(
    ADDR, st.sampled_from([16] * 6 + [528, 528, 8, 512, 1024, 3000]), st.just(False)
)
WRITABLE = st.tuples(
    ADDR, st.sampled_from([1] * 6 + [21, 513, 513, 1025, 512, 5000, 0]), st.just(True)
)
REQUEST = st.tuples(
    st.tuples(
        st.lists(READABLE, min_size=1, max_size=2), st.lists(WRITABLE, min_size=1, max_size=2)
    ).map(lambda rw: rw[0] + rw[1]),
    st.sampled_from([0, 0, 1, 1, 4, 8, 0x55]),  # type
    st.integers(0, 130),  # sector
)


def _put_header(dev, addr: int, req_type: int, sector: int) -> None:
    """Write a request header where the first descriptor points, if that is in memory."""
    t = dev._translate(addr, False)
    if t.ok and dev.mem.contains(t.paddr, 16) and t.paddr >> 12 >= POOL[0]:
        dev.mem.write(t.paddr, struct.pack("<IIQ", req_type, 0, sector))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    grants=st.lists(GRANT, min_size=ENTRIES - 3, max_size=ENTRIES - 3),
    ring_ro=st.sampled_from([False] * 5 + [True]),
    requests=st.lists(REQUEST, min_size=1, max_size=4),
    width=st.sampled_from([32, 64, 128]),
)
def test_handle_mode_transactions_stay_in_granted_pages(grants, ring_ro, requests, width):
    dev, drv = make(
        handle_mode=True, entries=ENTRIES, n=16, mem_size=MEM, domid=DOMID, data_width=width
    )
    assert drv.next_ref == 3
    for ref, (flags, domid, frame) in enumerate(grants, start=3):
        drv.set_grant(ref, GrantEntry(flags, domid, frame))
    if ring_ro:
        drv.set_grant(2, GrantEntry.permit(DOMID, drv.used.frames[0], readonly=True))
    for frame in POOL:
        dev.mem.fill(frame << 12, 4096, frame)
    next_desc = 0
    for descs, req_type, sector in requests:
        head = next_desc
        for k, (addr, length, writable) in enumerate(descs):
            flags = spec.VIRTQ_DESC_F_WRITE if writable else 0
            if k + 1 < len(descs):
                flags |= spec.VIRTQ_DESC_F_NEXT
            drv.write_desc(next_desc, addr, length, flags, next_desc + 1)
            next_desc += 1
        _put_header(dev, descs[0][0], req_type, sector)
        drv.publish(head)
    dev.clear_records()
    drv.notify()

    readable = set()
    writable = set()
    for e in dev.grants:
        if e.permits_access and e.domid == DOMID:
            readable.add(e.frame)
            if not e.readonly:
                writable.add(e.frame)
    for t in dev.transactions:
        page = t.addr >> 12
        assert (t.end - 1) >> 12 == page, t
        assert page in (writable if t.kind == "W" else readable), t
        assert 1 <= t.beats(width) <= 256
    event(f"faults={[f.cause for f in dev.faults]} completed={dev.completed}")
    # bookkeeping is consistent
    assert dev.completed == dev.used_idx == dev.last_avail_idx <= len(requests)
    assert len(dev.faults) <= 1
    if dev.faults:
        cause, addr = dev.faults[0]
        assert (dev.fault_status, dev.fault_cause, dev.fault_addr) == (1, cause, addr)
        assert dev.halted and dev.status & spec.STATUS_DEVICE_NEEDS_RESET
        if cause == spec.FAULT_BUS_ERROR:
            assert dev.transactions[-1].error and dev.transactions[-1].addr == addr
    else:
        assert dev.completed == len(requests)
    assert sum(t.error for t in dev.transactions) == (
        1 if dev.faults and dev.faults[0].cause == spec.FAULT_BUS_ERROR else 0
    )


@settings(max_examples=40, deadline=None)
@given(
    reqs=st.lists(
        st.tuples(
            st.sampled_from([spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT]),
            st.integers(0, 120),
            st.integers(1, 8),  # sectors
            st.integers(0, 4095),  # data offset
        ),
        min_size=1,
        max_size=5,
    ),
    handle_mode=st.booleans(),
    width=st.sampled_from([32, 64, 128]),
)
def test_disk_semantics_match_a_bytearray(reqs, handle_mode, width):
    """Reads and writes behave like a plain byte array of the disk, whatever the layout."""
    dev, drv = make(handle_mode=handle_mode, n=32, data_width=width, entries=256)
    disk = bytearray(spec.ramdisk_init(spec.DEFAULT_DISK_BYTES))
    posted = []
    for k, (req_type, sector, count, off) in enumerate(reqs):
        n = count * 512
        if req_type == spec.VIRTIO_BLK_T_OUT:
            payload = bytes((k * 37 + i) & 0xFF for i in range(n))
            posted.append((drv.request(req_type, sector, data=payload, data_offset=off), payload))
        else:
            posted.append((drv.request(req_type, sector, read_len=n, data_offset=off), None))
    drv.notify()
    assert dev.faults == [] and dev.completed == len(reqs)
    used = drv.take_used()
    for (req, payload), (req_type, sector, count, _), (uid, ulen) in zip(
        posted, reqs, used, strict=True
    ):
        n = count * 512
        assert uid == req.head
        base = sector * 512
        ok = base + n <= len(disk)
        assert drv.status_of(req) == (spec.VIRTIO_BLK_S_OK if ok else spec.VIRTIO_BLK_S_IOERR)
        if req_type == spec.VIRTIO_BLK_T_OUT:
            assert ulen == 1
            if ok:
                disk[base : base + n] = payload
        else:
            assert ulen == (n + 1 if ok else 1)
            if ok:
                assert drv.read_buf(req.data) == bytes(disk[base : base + n])
    assert bytes(dev.disk) == bytes(disk)
