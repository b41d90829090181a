"""End-to-end requests on the reference device with hand-built split virtqueues."""

from __future__ import annotations

import struct

import pytest

from models import spec
from models.device import HV_STAT_REQUESTS, HV_STAT_XLATE
from models.features import Features
from verif.harness import make as _make


def make(**kw):
    """The harness's device and driver, built as the foundation's device (``Features.none()``)
    unless ``features`` is given: these tests are the foundation's behaviour."""
    return _make(**{"features": Features.none(), **kw})

MODES = pytest.mark.parametrize("handle_mode", [False, True], ids=["gpa", "handle"])
SERIAL = spec.DEVICE_SERIAL


def keys(dev, start: int = 0):
    return [(t.kind, t.addr, t.nbytes) for t in dev.transactions[start:]]


def test_read_exact_transaction_sequence_gpa():
    dev, drv = make(handle_mode=False, n=8)
    # layout: desc 0x1000, avail 0x2000, used 0x3000, header 0x4000, data 0x5000, status 0x6000
    req = drv.request(spec.VIRTIO_BLK_T_IN, 2, read_len=1024)
    drv.notify()
    assert keys(dev) == [
        ("R", 0x2000, 4),
        ("R", 0x2004, 2),
        ("R", 0x1000, 16),
        ("R", 0x1010, 16),
        ("R", 0x1020, 16),
        ("R", 0x4000, 16),
        ("W", 0x5000, 1024),
        ("W", 0x6000, 1),
        ("W", 0x3004, 8),
        ("W", 0x3002, 2),
        ("R", 0x2000, 4),
    ]
    assert dev.transactions[6].data == bytes(dev.disk[1024:2048])
    assert dev.transactions[8].data == struct.pack("<II", req.head, 1025)
    assert dev.transactions[9].data == b"\x01\x00"
    assert drv.read_buf(req.data) == bytes(dev.disk[1024:2048])
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_OK
    assert drv.take_used() == [(0, 1025)]
    assert dev.irq and dev.guest.read(spec.MMIO_INTERRUPT_STATUS) == 1
    assert dev.completed == 1 and dev.translations == 0 and dev.faults == []
    assert dev.last_avail_idx == 1 and dev.used_idx == 1


@MODES
def test_write_then_read_back(handle_mode):
    dev, drv = make(handle_mode=handle_mode)
    payload = bytes((i * 13 + 5) & 0xFF for i in range(1536))
    req = drv.request(spec.VIRTIO_BLK_T_OUT, 10, data=payload)
    drv.notify()
    assert drv.take_used() == [(req.head, 1)]
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_OK
    assert bytes(dev.disk[10 * 512 : 10 * 512 + 1536]) == payload
    assert dev.disk[10 * 512 - 1] == spec.ramdisk_init(10 * 512)[-1]  # neighbours untouched
    assert dev.disk[13 * 512] == spec.ramdisk_init(13 * 512 + 1)[-1]
    req2 = drv.request(spec.VIRTIO_BLK_T_IN, 10, read_len=1536)
    drv.notify()
    assert drv.take_used() == [(req2.head, 1537)]
    assert drv.read_buf(req2.data) == payload


@MODES
def test_flush_and_get_id(handle_mode):
    _, drv = make(handle_mode=handle_mode)
    f = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    g20 = drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=20)
    drv.notify()
    assert drv.take_used() == [(f.head, 1), (g20.head, 21)]
    assert drv.status_of(f) == drv.status_of(g20) == spec.VIRTIO_BLK_S_OK
    assert drv.read_buf(g20.data) == SERIAL
    g8 = drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=8)
    g64 = drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=64)
    drv.notify()
    assert drv.take_used() == [(g8.head, 9), (g64.head, 21)]
    assert drv.read_buf(g8.data) == SERIAL[:8]
    assert drv.read_buf(g64.data) == SERIAL + b"\xee" * 44


def test_flush_transactions_have_no_data_phase():
    dev, drv = make()
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert [k for k, _, _ in keys(dev)] == ["R", "R", "R", "R", "R", "W", "W", "W", "R"]


@MODES
def test_unsupported_type(handle_mode):
    _, drv = make(handle_mode=handle_mode)
    req = drv.request(0x1234, read_len=512)
    drv.notify()
    assert drv.take_used() == [(req.head, 1)]
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_UNSUPP
    assert drv.read_buf(req.data) == b"\xee" * 512


@pytest.mark.parametrize(
    ("req_type", "sector", "length"),
    [
        (spec.VIRTIO_BLK_T_IN, 0, 100),  # not a multiple of 512
        (spec.VIRTIO_BLK_T_IN, 127, 1024),  # past the end of a 64 KiB disk
        (spec.VIRTIO_BLK_T_IN, 2**60, 512),  # sector * 512 overflows 64 bits
        (spec.VIRTIO_BLK_T_OUT, 0, 513),
        (spec.VIRTIO_BLK_T_OUT, 128, 512),
    ],
)
def test_ioerr_moves_nothing(req_type, sector, length):
    dev, drv = make()
    disk = bytes(dev.disk)
    if req_type == spec.VIRTIO_BLK_T_IN:
        req = drv.request(req_type, sector, read_len=length)
    else:
        req = drv.request(req_type, sector, data=b"\x55" * length)
    drv.notify()
    assert drv.take_used() == [(req.head, 1)]
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_IOERR
    assert bytes(dev.disk) == disk
    data_page = req.data.frames[0]
    assert all(t.addr >> 12 != data_page for t in dev.transactions)


def test_boundary_requests_accepted():
    dev, drv = make()
    last = drv.request(spec.VIRTIO_BLK_T_IN, 127, read_len=512)  # last sector
    empty = drv.request(spec.VIRTIO_BLK_T_IN, 128, read_len=0)  # D = 0 at the end: OK
    drv.notify()
    assert drv.take_used() == [(last.head, 513), (empty.head, 1)]
    assert drv.read_buf(last.data) == bytes(dev.disk[-512:])
    assert drv.status_of(empty) == spec.VIRTIO_BLK_S_OK


def test_multi_page_buffer_discontiguous_frames_behind_consecutive_refs():
    dev, drv = make(handle_mode=True, data_width=32)
    req = drv.request(spec.VIRTIO_BLK_T_IN, 4, read_len=8192, data_offset=0x600, data_stride=3)
    f = req.data.frames
    assert f[1] - f[0] == 3 and req.data.refs == [req.data.refs[0] + k for k in range(3)]
    start = len(dev.transactions)
    before = dev.translations
    drv.notify()
    assert drv.read_buf(req.data) == bytes(dev.disk[4 * 512 : 4 * 512 + 8192])
    data_txns = [(a, n) for k, a, n in keys(dev, start) if k == "W" and n > 8]
    p = [x << 12 for x in f]
    assert data_txns == [
        (p[0] + 0x600, 0x200),
        (p[0] + 0x800, 0x400),
        (p[0] + 0xC00, 0x400),
        (p[1], 0x400),
        (p[1] + 0x400, 0x400),
        (p[1] + 0x800, 0x400),
        (p[1] + 0xC00, 0x400),
        (p[2], 0x400),
        (p[2] + 0x400, 0x200),
    ]
    # poll, ring, 3 descriptors, header, 3 data pages, status, used elem, used idx, poll
    assert dev.translations - before == 13


def test_header_and_data_share_descriptors():
    """virtio 1.x section 2.6.4: no framing assumptions; one descriptor may carry the header
    and the data, another the data and the status byte."""
    dev, drv = make()
    out = drv.buffer(16 + 512, readonly=True)
    drv.write_buf(out, struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 3) + b"\xa5" * 512)
    st = drv.buffer(1)
    head = drv.chain([(out.dma, 528, False), (st.dma, 1, True)])
    drv.publish(head)
    hdr = drv.buffer(16, readonly=True)
    drv.write_buf(hdr, struct.pack("<IIQ", spec.VIRTIO_BLK_T_IN, 0, 3))
    inb = drv.buffer(1024 + 1)
    head2 = drv.chain([(hdr.dma, 8, False), (hdr.dma + 8, 8, False), (inb.dma, 1025, True)])
    drv.publish(head2)
    drv.notify()
    assert drv.take_used() == [(head, 1), (head2, 1025)]
    assert bytes(dev.disk[3 * 512 : 4 * 512]) == b"\xa5" * 512
    assert drv.read_buf(inb, 0, 512) == b"\xa5" * 512
    assert drv.read_buf(inb, 1024, 1) == b"\x00"  # status OK
    k = keys(dev)
    assert ("R", out.phys(0), 16) in k and ("R", out.phys(16), 512) in k
    assert ("R", hdr.phys(0), 8) in k and ("R", hdr.phys(8), 8) in k
    assert ("W", inb.phys(0), 1024) in k and ("W", inb.phys(1024), 1) in k


def test_zero_length_descriptors_make_no_access():
    dev, drv = make()
    hdr = drv.buffer(16, readonly=True)
    drv.write_buf(hdr, struct.pack("<IIQ", spec.VIRTIO_BLK_T_GET_ID, 0, 0))
    data = drv.buffer(20)
    st = drv.buffer(1)
    nowhere = 0x7FFF_0000
    head = drv.chain(
        [
            (nowhere, 0, False),
            (hdr.dma, 16, False),
            (nowhere, 0, True),
            (data.dma, 20, True),
            (nowhere, 0, True),
            (st.dma, 1, True),
            (nowhere, 0, True),
        ]
    )
    drv.publish(head)
    drv.notify()
    assert drv.take_used() == [(head, 21)]
    assert all(t.addr >> 12 != nowhere >> 12 for t in dev.transactions)
    assert drv.read_buf(data) == SERIAL


@MODES
def test_ring_positions_wrap_with_small_queue(handle_mode):
    dev, drv = make(handle_mode=handle_mode, n=2, entries=256)
    heads = []
    for k in range(7):  # one at a time, then in pairs
        r = drv.request(spec.VIRTIO_BLK_T_FLUSH)
        heads.append(r.head)
        if k < 3 or k % 2 == 0:
            drv.notify()
    drv.notify()
    assert dev.completed == 7 and dev.used_idx == 7 and dev.last_avail_idx == 7
    assert drv.used_idx() == 7
    assert drv.used_elem(5) == (heads[5], 1) and drv.used_elem(6) == (heads[6], 1)
    ring_reads = [a for k, a, n in keys(dev) if k == "R" and n == 2]
    avail = drv.avail.phys(0)
    assert ring_reads == [avail + 4 + 2 * (i % 2) for i in range(7)]
    used_writes = [a for k, a, n in keys(dev) if k == "W" and n == 8]
    assert used_writes == [drv.used.phys(0) + 4 + 8 * (i % 2) for i in range(7)]


def test_sixteen_bit_index_wrap():
    """More than 65536 requests: avail/used indices wrap modulo 2**16 (section 2.7.6)."""
    dev, drv = make(n=256)
    r = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    for k in range(256):
        drv.set_ring(k, r.head)
    total = 65536 + 512
    for _ in range(total // 256):
        drv.set_avail_idx(drv.avail_idx + 256)
        drv.notify()
    assert dev.faults == []
    assert dev.completed == total
    assert dev.last_avail_idx == dev.used_idx == drv.used_idx() == 512


def test_pending_equal_to_n_is_accepted_across_the_wrap():
    dev, drv = make(n=4)
    r = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    for k in range(4):
        drv.set_ring(k, r.head)
    dev.last_avail_idx = dev.used_idx = 0xFFFE  # white-box: position the indices near the wrap
    drv.set_avail_idx(0x0002)
    drv.notify()
    assert dev.faults == [] and dev.completed == 4
    assert drv.used_idx() == 2 and dev.last_avail_idx == 2


@MODES
def test_no_interrupt_suppresses_used_buffer_interrupt(handle_mode):
    dev, drv = make(handle_mode=handle_mode)
    drv.set_avail_flags(spec.VIRTQ_AVAIL_F_NO_INTERRUPT)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.completed == 1 and not dev.irq
    drv.set_avail_flags(0)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.completed == 2 and dev.irq


def test_notify_acceptance_conditions():
    dev, drv = make()
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    g = dev.guest
    g.write(spec.MMIO_QUEUE_NOTIFY, 1)  # another queue index
    g.write(spec.MMIO_QUEUE_READY, 0)
    g.write(spec.MMIO_QUEUE_NOTIFY, 0)
    g.write(spec.MMIO_QUEUE_READY, 1)
    g.write(spec.MMIO_STATUS, 0xB)  # DRIVER_OK clear
    g.write(spec.MMIO_QUEUE_NOTIFY, 0)
    assert dev.transactions == []
    g.write(spec.MMIO_STATUS, 0xF)
    g.write(spec.MMIO_QUEUE_NOTIFY, 0)
    assert dev.completed == 1
    n = len(dev.transactions)
    g.write(spec.MMIO_QUEUE_NOTIFY, 0)  # nothing pending: one poll, idle
    assert keys(dev, n) == [("R", drv.avail.phys(0), 4)]


def test_queue_sel_does_not_affect_the_engine():
    dev, drv = make()
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    dev.guest.write(spec.MMIO_QUEUE_SEL, 5)
    drv.notify()
    assert dev.completed == 1


@pytest.mark.parametrize("width", [32, 64, 128])
def test_data_bursts_follow_the_data_width(width):
    dev, drv = make(data_width=width)
    req = drv.request(spec.VIRTIO_BLK_T_OUT, 0, data=bytes(4096), data_offset=0x10)
    drv.notify()
    b = spec.burst_bytes(width)
    base = req.data.phys(0)
    data = [(a, n) for k, a, n in keys(dev) if k == "R" and base <= a < base + 4096]
    cuts = []
    pos = base
    end = base + 4096
    while pos < end:
        nxt = min((pos // b + 1) * b, (pos // 4096 + 1) * 4096, end)
        cuts.append((pos, nxt - pos))
        pos = nxt
    assert data == cuts
    assert all(t.beats(width) <= 256 for t in dev.transactions)


def test_handle_and_gpa_modes_issue_identical_transactions_with_identity_grants():
    """With ref == frame grants, handle mode only adds lookups: same bus traffic."""
    logs = []
    for hm in (False, True):
        dev, drv = make(handle_mode=hm, n=4)
        drv.next_ref = drv.next_frame = 1
        drv.setup(4)
        drv.request(spec.VIRTIO_BLK_T_OUT, 1, data=bytes(range(256)) * 6, data_offset=0xF00)
        drv.request(spec.VIRTIO_BLK_T_IN, 1, read_len=1536, data_offset=0x123)
        drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=20)
        drv.notify()
        logs.append(dev.transactions)
    gpa, handle = logs
    assert [(t.kind, t.addr, t.nbytes) for t in gpa] == [(t.kind, t.addr, t.nbytes) for t in handle]
    # identical data too, except that descriptors carry handles (bit 63) instead of GPAs
    for a, b in zip(gpa, handle, strict=True):
        if (a.kind, a.nbytes) != ("R", 16) or a.addr >> 12 != 1:
            assert a.data == b.data


def test_statistics_counters_follow_rst_not_driver_reset():
    dev, drv = make(handle_mode=True)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.request(spec.VIRTIO_BLK_T_IN, read_len=512, data_offset=0xF00)
    drv.notify()
    assert dev.hv.read(HV_STAT_XLATE) == dev.translations == 19  # 1 + 7 + 10 (2 data pages) + 1
    assert dev.hv.read(HV_STAT_REQUESTS) == dev.completed == 2
    dev.guest.write(spec.MMIO_STATUS, 0)
    assert dev.hv.read(HV_STAT_REQUESTS) == 2
    dev.reset()
    assert dev.hv.read(HV_STAT_XLATE) == dev.hv.read(HV_STAT_REQUESTS) == 0
    assert dev.translations == 19  # recording survives; clear_records() forgets it
    dev.clear_records()
    assert (dev.translations, dev.completed, dev.transactions, dev.faults) == (0, 0, [], [])


def test_gpa_mode_makes_no_table_lookups():
    dev, drv = make(handle_mode=False)
    drv.request(spec.VIRTIO_BLK_T_IN, read_len=8192, data_offset=0x10)
    drv.notify()
    assert dev.completed == 1 and dev.translations == 0 and dev.hv.read(HV_STAT_XLATE) == 0


def test_notify_while_running_gives_one_more_round():
    """A notify accepted while the engine runs is kept pending (however many arrive) and
    restarts the engine once it goes idle: one extra queue check and poll."""
    calls = []
    dev, drv = make()

    def hook(txn):
        if len(calls) < 2 and txn.kind == "W" and txn.nbytes == 8:  # at the used element
            calls.append(txn)
            drv.notify()
            drv.notify()

    dev.on_transaction = hook
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    polls = [t for t in dev.transactions if t.nbytes == 4]
    assert len(calls) == 1 and len(polls) == 3  # poll, (request), poll -> idle, poll -> idle
    assert dev.transactions[-1].nbytes == dev.transactions[-2].nbytes == 4
    assert not dev.pending_notify


def test_driver_reset_while_running_stops_after_the_burst():
    dev, drv = make(data_width=32)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=4096)
    data_page = req.data.frames[0]

    def hook(txn):
        if txn.kind == "W" and txn.addr >> 12 == data_page:
            dev.guest.write(spec.MMIO_STATUS, 0)  # reset during the first data burst

    dev.on_transaction = hook
    drv.notify()
    last = dev.transactions[-1]
    assert (last.kind, last.addr, last.nbytes) == ("W", data_page << 12, 1024)
    assert dev.faults == [] and not dev.halted and dev.completed == 0
    assert dev.guest.read(spec.MMIO_STATUS) == 0 and dev.last_avail_idx == 0
    # the device works again after re-initialisation
    dev.on_transaction = None
    drv.setup(8)
    r = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert drv.take_used() == [(r.head, 1)]


def test_reset_and_renotify_inside_a_run_restart_the_engine():
    dev, drv = make()
    state = {"done": False}
    drv.request(spec.VIRTIO_BLK_T_FLUSH)

    def hook(txn):
        if not state["done"] and txn.kind == "W":
            state["done"] = True
            dev.guest.write(spec.MMIO_STATUS, 0)
            drv.setup(4)
            drv.request(spec.VIRTIO_BLK_T_FLUSH)
            drv.notify()  # engine still finishing its burst: pending

    dev.on_transaction = hook
    drv.notify()
    assert dev.completed == 1 and dev.last_avail_idx == 1 and drv.used_idx() == 1
