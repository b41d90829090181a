"""Issue 17's features on the reference device (docs/architecture.md "Features a build offers"
and the ring engine's steps 2, 3.2, 3.3, 3.5, 3.9 and 4): the configuration space per build,
indirect tables, the SEG_MAX and SIZE_MAX limits, DISCARD and WRITE_ZEROES, EVENT_IDX.

Expected values are written from the contract and virtio 1.2 (sections 2.7.5.3, 2.7.7, 2.7.10,
5.2.4, 5.2.6), never from the model's own helpers.
"""

from __future__ import annotations

import functools
import itertools
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from models import spec, virtio
from models.device import ReferenceDevice
from models.engine import vring_need_event
from models.features import Features
from models.grant import GrantEntry
from models.memory import GuestMemory
from verif.harness import HandDriver, make

NEXT, WRITE, INDIRECT = (spec.VIRTQ_DESC_F_NEXT, spec.VIRTQ_DESC_F_WRITE,
                         spec.VIRTQ_DESC_F_INDIRECT)
F_V1 = 1 << spec.VIRTIO_F_VERSION_1
F_AP = 1 << spec.VIRTIO_F_ACCESS_PLATFORM
F_IND = 1 << spec.VIRTIO_F_INDIRECT_DESC
F_EVT = 1 << spec.VIRTIO_RING_F_EVENT_IDX
MODES = pytest.mark.parametrize("handle_mode", [False, True], ids=["gpa", "handle"])
U16 = 0xFFFF


def keys(dev, start: int = 0) -> list[tuple[str, int, int]]:
    return [(t.kind, t.addr, t.nbytes) for t in dev.transactions[start:]]


def setup(n: int = 8, *, driver: int | None = None, handle_mode: bool = False, **kw):
    """A device and a harness driver with an ``n``-entry queue; the driver accepts ``driver``
    (VERSION_1 and, in handle mode, ACCESS_PLATFORM added) or, by default, every offered bit."""
    dev, drv = make(handle_mode=handle_mode, n=None, **kw)
    if driver is not None:
        feats = driver | F_V1 | (F_AP if handle_mode else 0)
        drv.negotiate = functools.partial(HandDriver.negotiate, drv, feats)
    drv.setup(n)
    return dev, drv


def negotiated(dev) -> int:
    out = 0
    for sel in (0, 1):
        dev.guest.write(spec.MMIO_DRIVER_FEATURES_SEL, sel)
        out |= dev.guest.read(spec.MMIO_DRIVER_FEATURES) << 32 * sel
    return out


class Req:
    """A virtio-blk request's buffers (header, data, status) laid out but not chained."""

    def __init__(self, drv: HandDriver, req_type: int, sector: int = 0, *,
                 data: bytes | None = None, read_len: int = 0) -> None:
        self.header = drv.buffer(16, readonly=True)
        drv.write_buf(self.header, virtio.BLK_HEADER.pack(req_type, 0, sector))
        self.segs = [(self.header.dma, 16, 0)]
        self.data = None
        if data is not None:
            self.data = drv.buffer(len(data), readonly=True)
            drv.write_buf(self.data, data)
            self.segs.append((self.data.dma, len(data), 0))
        elif read_len:
            self.data = drv.buffer(read_len)
            drv.write_buf(self.data, b"\xee" * read_len)
            self.segs.append((self.data.dma, read_len, WRITE))
        self.status = drv.buffer(1)
        drv.write_buf(self.status, b"\xff")
        self.segs.append((self.status.dma, 1, WRITE))
        self.drv = drv

    def status_byte(self) -> int:
        return self.drv.read_buf(self.status, 0, 1)[0]


def write_table(drv: HandDriver, entries: list[tuple[int, int, int, int]], *,
                room: int | None = None):
    """An indirect table: ``(addr, len, flags, next)`` per entry, in a fresh readable buffer of
    ``room`` entries (default: as many as given)."""
    room = len(entries) if room is None else room
    table = drv.buffer(16 * max(room, 1), readonly=True)
    for k, entry in enumerate(entries):
        drv.write_buf(table, virtio.DESC.pack(*entry), 16 * k)
    return table


def linked(segs: list[tuple[int, int, int]], first: int = 0) -> list[tuple[int, int, int, int]]:
    """``(addr, len, flags)`` segments as table entries ``first``, ``first + 1``, ... linked by
    NEXT."""
    out = []
    for k, (addr, length, flags) in enumerate(segs):
        last = k + 1 == len(segs)
        out.append((addr, length, flags | (0 if last else NEXT), 0 if last else first + k + 1))
    return out


def publish_indirect(drv: HandDriver, table_dma: int, table_len: int, *, flags: int = 0,
                     index: int = 0) -> int:
    """Descriptor ``index`` of the ring: INDIRECT (| ``flags``) to the table; published."""
    drv.write_desc(index, table_dma, table_len, INDIRECT | flags, 0)
    drv.publish(index)
    return index


def assert_fault(dev, cause: int, addr: int) -> None:
    assert dev.faults == [(cause, addr)] and dev.halted
    assert dev.hv.read(spec.HV_FAULT_CAUSE) == cause
    assert dev.hv.read(spec.HV_FAULT_ADDR_LO) | dev.hv.read(spec.HV_FAULT_ADDR_HI) << 32 == addr


def touches(dev, buf) -> list[tuple[str, int, int]]:
    """Transactions that touch any page of ``buf``."""
    pages = set(buf.frames)
    return [(t.kind, t.addr, t.nbytes) for t in dev.transactions
            if t.addr >> 12 in pages or (t.end - 1) >> 12 in pages]


# =================================================================================================
# Registers: DeviceFeatures, the configuration space, FEATURES_OK, resets
# =================================================================================================

BUILDS = {
    "default": Features(),
    "none": Features.none(),
    "no_indirect_event": Features(indirect=False, event_idx=False),
    "limits_off": Features(seg_max=0, size_max=0, blk_size=False),
    "discard_only": Features(write_zeroes=False, seg_max=3, size_max=4096),
    "write_zeroes_only": Features(discard=False, size_max=0xFFFF_FFFF, seg_max=0xFFFF),
}


def expected_config(f: Features, queue_num_max: int, disk_bytes: int) -> dict[int, int]:
    """The configuration words (offset from 0x100 -> value), written out from section 5.2.4
    and the register table; absent offsets read 0."""
    sectors = disk_bytes // 512
    seg = (max(1, min(128, queue_num_max - 2)) if f.seg_max is None else f.seg_max)
    dwz = min(sectors, 0xFFFF_FFFF)
    return {0x00: sectors & 0xFFFF_FFFF, 0x04: sectors >> 32, 0x08: f.size_max, 0x0C: seg,
            0x14: 512 if f.blk_size else 0,
            0x24: dwz if f.discard else 0, 0x28: 1 if f.discard else 0,
            0x2C: 8 if f.discard else 0,
            0x30: dwz if f.write_zeroes else 0, 0x34: 1 if f.write_zeroes else 0, 0x38: 0}


def expected_features(f: Features, queue_num_max: int, mode: int) -> int:
    seg = (max(1, min(128, queue_num_max - 2)) if f.seg_max is None else f.seg_max)
    bits = {9, 32} | ({33} if mode else set())
    bits |= {b for on, b in ((f.size_max, 1), (seg, 2), (f.blk_size, 6), (f.discard, 13),
                              (f.write_zeroes, 14), (f.indirect, 28), (f.event_idx, 29)) if on}
    return sum(1 << b for b in bits)


@pytest.mark.parametrize("features", BUILDS.values(), ids=BUILDS)
@pytest.mark.parametrize(("queue_num_max", "disk_bytes"), [(256, 1 << 16), (4, 512), (1024, 0)])
def test_configuration_space_and_device_features(features, queue_num_max, disk_bytes):
    dev = ReferenceDevice(GuestMemory(1 << 16), features=features, queue_num_max=queue_num_max,
                          disk_bytes=disk_bytes)
    want = expected_config(features, queue_num_max, disk_bytes)
    for off in range(0, 0x100, 4):
        assert dev.guest.read(spec.MMIO_CONFIG + off) == want.get(off, 0), hex(off)
        dev.guest.write(spec.MMIO_CONFIG + off, 0xFFFF_FFFF)  # read-only
        assert dev.guest.read(spec.MMIO_CONFIG + off) == want.get(off, 0), hex(off)
    for mode in (0, 1, 2):
        dev.hv.write(spec.HV_CTRL, mode)
        got = 0
        for sel in (0, 1, 2):
            dev.guest.write(spec.MMIO_DEVICE_FEATURES_SEL, sel)
            got |= dev.guest.read(spec.MMIO_DEVICE_FEATURES) << 32 * sel
        assert got == expected_features(features, queue_num_max, mode)


def test_features_ok_accepts_the_offered_bits_only():
    def try_ok(dev, value):
        g = dev.guest
        g.write(spec.MMIO_STATUS, 0)
        g.write(spec.MMIO_STATUS, 3)
        for sel in (0, 1):
            g.write(spec.MMIO_DRIVER_FEATURES_SEL, sel)
            g.write(spec.MMIO_DRIVER_FEATURES, value >> 32 * sel & 0xFFFF_FFFF)
        g.write(spec.MMIO_STATUS, 3 | spec.STATUS_FEATURES_OK)
        return bool(g.read(spec.MMIO_STATUS) & spec.STATUS_FEATURES_OK)

    full = ReferenceDevice(GuestMemory(4096))
    everything = expected_features(Features(), 256, 0)
    assert try_ok(full, everything) and try_ok(full, F_V1 | F_IND | F_EVT)
    assert not try_ok(full, everything & ~F_V1)
    full.hv.write(spec.HV_CTRL, 2)
    assert try_ok(full, everything | F_AP) and not try_ok(full, everything)
    bare = ReferenceDevice(GuestMemory(4096), features=Features(indirect=False, seg_max=0))
    assert try_ok(bare, F_V1 | F_EVT | 1 << spec.VIRTIO_BLK_F_DISCARD)
    for bit in (spec.VIRTIO_F_INDIRECT_DESC, spec.VIRTIO_BLK_F_SEG_MAX):
        assert not try_ok(bare, F_V1 | 1 << bit)


def test_resets_clear_the_event_idx_state():
    dev, drv = setup()
    for _ in range(3):
        drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.signalled_used == dev.avail_event_pub == 3
    dev.guest.write(spec.MMIO_STATUS, 0)
    assert dev.signalled_used == dev.avail_event_pub == dev.used_idx == 0
    drv.setup(8)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.signalled_used == dev.avail_event_pub == 1
    dev.reset()
    assert dev.signalled_used == dev.avail_event_pub == 0


# =================================================================================================
# Indirect tables (section 2.7.5.3)
# =================================================================================================


@MODES
def test_indirect_chain_moves_what_the_direct_chain_moves(handle_mode):
    payload = bytes((i * 29 + 3) & 0xFF for i in range(1024))
    results = []
    for form in ("direct", "indirect"):
        dev, drv = setup(handle_mode=handle_mode)
        w = Req(drv, spec.VIRTIO_BLK_T_OUT, 6, data=payload)
        r = Req(drv, spec.VIRTIO_BLK_T_IN, 5, read_len=1536)
        for req in (w, r):
            if form == "direct":
                drv.publish(drv.chain([(a, n, bool(f)) for a, n, f in req.segs]))
            else:
                table = write_table(drv, linked(req.segs))
                publish_indirect(drv, table.dma, 16 * len(req.segs), index=drv.avail_idx)
        drv.notify()
        assert w.status_byte() == r.status_byte() == spec.VIRTIO_BLK_S_OK
        used = drv.take_used()
        assert [u[1] for u in used] == [1, 1537]
        results.append((bytes(dev.disk), drv.read_buf(r.data), dev.faults))
    assert results[0] == results[1]
    assert results[1][0][6 * 512 : 8 * 512] == payload


def test_indirect_transaction_sequence_and_ignored_write_flag():
    """The head descriptor, then the whole table read as one access (48 bytes at the table),
    then the request as a direct chain would move it, its buffers in chain order (the walk
    starts at entry 0; here 0, 2, 1: header, data, status)."""
    dev, drv = setup(n=8)
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 3, read_len=512)
    (h, hl, hf), (d, dl, df), (s, sl, sf) = req.segs
    table = write_table(drv, [(h, hl, hf | NEXT, 2), (s, sl, sf, 0), (d, dl, df | NEXT, 1)])
    publish_indirect(drv, table.dma, 48, flags=WRITE, index=5)  # its WRITE flag is ignored
    drv.notify()
    q = drv.desc.dma
    t = table.dma
    assert keys(dev) == [
        ("R", drv.avail.dma, 4), ("R", drv.avail.dma + 4, 2), ("R", q + 80, 16),
        ("R", t, 48),
        ("R", h, 16), ("W", d, 512), ("W", s, 1), ("W", drv.used.dma + 4, 8),
        ("W", drv.used.dma + 2, 2),
        ("R", drv.avail.dma + 4 + 16, 2),  # used_event (EVENT_IDX negotiated)
        ("R", drv.avail.dma, 4), ("W", drv.used.dma + 4 + 64, 2), ("R", drv.avail.dma, 4)]
    assert req.status_byte() == spec.VIRTIO_BLK_S_OK
    assert drv.read_buf(req.data) == bytes(dev.disk[3 * 512 : 4 * 512])
    assert drv.take_used() == [(5, 513)]


def test_ring_descriptors_before_the_indirect_one_count():
    """A ring chain header -> INDIRECT(table: data, status): the indirect descriptor is not
    counted, so 3 descriptors with seg_max = 1 (limit 3) are within the limits; a table with
    one more data entry is over them (IOERR)."""
    for extra, status in ((0, spec.VIRTIO_BLK_S_OK), (1, spec.VIRTIO_BLK_S_IOERR)):
        dev, drv = setup(n=8, features=Features(seg_max=1))
        req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=512)
        (h, hl, _), data, stat = req.segs
        table = write_table(drv, linked([data] * (1 + extra) + [stat]))
        drv.write_desc(0, h, hl, NEXT, 1)
        drv.write_desc(1, table.dma, 16 * (2 + extra), INDIRECT, 0)
        drv.publish(0)
        drv.notify()
        assert dev.faults == [] and req.status_byte() == status


def indirect_case(name: str):
    """``(features, driver features, builder, fault index)``; the builder lays out the chain on
    ``drv`` and returns the table buffer (or None)."""
    n = 8

    def table_of(drv, entries, *, room=None):
        return write_table(drv, entries, room=room)

    def request_entries(drv, first=0):
        return linked(Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=512).segs, first)

    def plain(flags=0, length=None, entries=None, addr=None):
        def build(drv):
            ents = request_entries(drv) if entries is None else entries(drv)
            table = table_of(drv, ents)
            publish_indirect(drv, table.dma if addr is None else addr,
                             16 * len(ents) if length is None else length, flags=flags, index=3)
            return table
        return build

    def nested(drv):
        ents = request_entries(drv)
        inner = table_of(drv, ents)
        table = table_of(drv, [(*ents[0][:2], NEXT, 1), (inner.dma, 48, INDIRECT, 0)])
        publish_indirect(drv, table.dma, 32, index=3)
        return table

    def past_end(nxt):
        def entries(drv):
            ents = request_entries(drv)
            return [ents[0], (*ents[1][:3], nxt)]  # data entry points past the table
        return entries

    def loop(drv):
        ents = request_entries(drv)  # 0 header -> 1 data -> 2 status; make 2 -> 0 readable
        ents = [ents[0], (*ents[1][:2], NEXT, 2), (ents[0][0], 16, NEXT, 0)]
        table = table_of(drv, ents)
        publish_indirect(drv, table.dma, 48, index=3)
        return table

    cases = {
        # the build does not offer INDIRECT_DESC: the foundation's cause 7
        "not_offered": (Features.none(), None, plain(), 3),
        # offered, not negotiated
        "not_negotiated": (Features(), 0, plain(), 3),
        "with_next": (Features(), None, plain(flags=NEXT), 3),
        "length_zero": (Features(), None, plain(length=0), 3),
        "length_not_multiple_of_16": (Features(), None, plain(length=40), 3),
        "longer_than_queue": (Features(), None, plain(
            entries=lambda drv: request_entries(drv) + [(0, 0, 0, 0)] * (n - 2),
            length=16 * (n + 1)), 3),
        "wraps_address_space": (Features(), None, plain(addr=2**64 - 16, length=32), 3),
        "indirect_inside_table": (Features(), None, nested, 1),
        "index_past_table": (Features(), None, plain(entries=past_end(2)), 2),
        "index_far_past_table": (Features(), None, plain(entries=past_end(0xFFFF)), 0xFFFF),
        # 0, 1, 2, 0, 1, 2, 0, 1, then descriptor number 9 = N + 1 at index 2
        "loop_inside_table": (Features(), None, loop, 2),
    }
    return cases[name]


INDIRECT_CASES = ["not_offered", "not_negotiated", "with_next", "length_zero",
                  "length_not_multiple_of_16", "longer_than_queue", "wraps_address_space",
                  "indirect_inside_table", "index_past_table", "index_far_past_table",
                  "loop_inside_table"]


@pytest.mark.parametrize("name", INDIRECT_CASES)
@MODES
def test_malformed_indirect_is_cause_7_with_the_contract_index(name, handle_mode):
    features, driver, build, index = indirect_case(name)
    dev, drv = setup(n=8, driver=driver, handle_mode=handle_mode, features=features)
    disk = bytes(dev.disk)
    table = build(drv)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_CHAIN, index)
    assert bytes(dev.disk) == disk and drv.take_used() == []
    table_reads = touches(dev, table)
    read_whole = name in ("index_past_table", "index_far_past_table", "loop_inside_table",
                          "indirect_inside_table")
    if read_whole:
        # the whole table (len bytes, here inside one page and one burst window) is read once,
        # as one access, before its entries are checked; nothing else of it
        t = table.phys(0) if handle_mode else table.dma
        assert table_reads == [("R", t, table.nbytes)]
    else:  # rejected at the indirect descriptor: the table is never read
        assert table_reads == []
    # no transaction after the table's read (or the indirect descriptor's), no write at all
    assert all(k == "R" for k, _, _ in keys(dev))
    assert keys(dev)[-1][2] == (table.nbytes if read_whole else 16)


def test_loop_count_includes_ring_descriptors_before_the_table():
    """header (ring) -> INDIRECT -> table 0 -> 1 -> 2 -> 0 ...: descriptor number 9 (N = 8) is
    the eighth table entry walked: 0, 1, 2, 0, 1, 2, 0, then index 1. The table is read once,
    whole (48 bytes), and the walk goes round it in what was read."""
    dev, drv = setup(n=8)
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=512)
    (h, hl, _), (d, dl, df), _ = req.segs
    table = write_table(drv, [(d, dl, df | NEXT, 1), (d, dl, df | NEXT, 2), (d, dl, df | NEXT, 0)])
    drv.write_desc(6, h, hl, NEXT, 7)
    drv.write_desc(7, table.dma, 48, INDIRECT, 0)
    drv.publish(6)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_CHAIN, 1)
    assert touches(dev, table) == [("R", table.dma, 48)]


def straddling_table(drv: HandDriver, entries: list[tuple[int, int, int, int]], count: int,
                     offset: int):
    """A table of ``count`` entries (``entries`` first, then zeros) at page offset ``offset``,
    one grant per page in handle mode, its pages on frames two apart (contiguous in GPA
    mode)."""
    table = drv.buffer(16 * count, offset=offset, readonly=True,
                       stride=2 if drv.handle_mode else 1)
    for k, entry in enumerate(entries):
        drv.write_buf(table, virtio.DESC.pack(*entry), 16 * k)
    return table


@pytest.mark.parametrize(("data_width", "n", "count", "offset", "cuts"), [
    # 4 entries straddling a page boundary: one burst per page
    (64, 8, 4, spec.PAGE_SIZE - 32, [32, 32]),
    # 80 entries (1280 bytes) at page offset 512, data width 32: bursts end at multiples of
    # 256 beats * 4 bytes = 1 KiB
    (32, 128, 80, 512, [512, 768]),
], ids=["page", "burst_window"])
def test_indirect_table_is_read_as_the_bursts_of_one_access(data_width, n, count, offset, cuts):
    """The table, len = 16 * count bytes (more entries than the chain uses), is one DMA access
    cut like any other (docs/architecture.md "Bus transactions"): its bursts, back to back,
    cover exactly [addr, addr + len); no entry is read on its own."""
    dev, drv = setup(n=n, handle_mode=True, data_width=data_width)
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 2, read_len=512)
    table = straddling_table(drv, linked(req.segs), count, offset)
    publish_indirect(drv, table.dma, 16 * count, index=1)
    drv.notify()
    assert dev.faults == [] and req.status_byte() == spec.VIRTIO_BLK_S_OK
    assert drv.take_used() == [(1, 513)]
    starts = [0, cuts[0]]
    expected = [("R", table.phys(a), size) for a, size in zip(starts, cuts, strict=True)]
    assert touches(dev, table) == expected
    first = keys(dev).index(expected[0])
    assert keys(dev)[first : first + 2] == expected  # back to back: one access
    assert keys(dev)[first - 1] == ("R", drv.desc.phys(16), 16)  # the indirect descriptor
    assert keys(dev)[first + 2] == ("R", req.header.phys(0), 16)  # then the header


@pytest.mark.parametrize("handle_mode", [True, False], ids=["handle_not_granted",
                                                           "gpa_bus_error"])
def test_a_fault_on_the_table_read_comes_before_its_entries_are_checked(handle_mode):
    """A table straddling two pages whose second page cannot be read (handle mode: its grant
    is not permit_access, cause 3; GPA mode: the bus answers an error, cause 6), with a
    malformed entry 0 (INDIRECT inside a table, cause 7 at index 0 once checked): the fault is
    the table read's, at its second page, and the walk never checks entry 0."""
    bad: set[int] = set()
    dev, drv = setup(n=8, handle_mode=handle_mode,
                     bus_error=lambda txn: txn.addr >> spec.PAGE_SHIFT in bad)
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=512)
    ents = linked(req.segs)
    nested = (req.header.dma, 48, INDIRECT, 0)  # malformed in a table
    table = straddling_table(drv, [nested, *ents[1:]], 4, spec.PAGE_SIZE - 32)
    if handle_mode:
        drv.set_grant(table.refs[1], GrantEntry(flags=0, domid=drv.domid, frame=table.frames[1]))
        cause, addr = spec.FAULT_NOT_PERMITTED, spec.make_handle(table.refs[1], 0)
    else:
        bad.add(table.frames[1])
        cause, addr = spec.FAULT_BUS_ERROR, table.phys(32)
    assert addr == (table.dma + 32 if handle_mode else table.phys(32))
    publish_indirect(drv, table.dma, 64, index=1)
    drv.notify()
    assert_fault(dev, cause, addr)
    first = ("R", table.phys(0), 32)
    if handle_mode:  # the first page's burst goes out; the second page's lookup fails
        assert touches(dev, table) == [first]
    else:  # both bursts go out, the second answered with an error
        assert touches(dev, table) == [first, ("R", table.phys(32), 32)]
    assert keys(dev)[-len(touches(dev, table))] == first  # the last access of the kick
    assert drv.take_used() == [] and not any(t.kind == "W" for t in dev.transactions)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(0, 16 * 9), n_log=st.integers(0, 3), flags=st.sampled_from(
    [0, WRITE, NEXT, NEXT | WRITE]))
def test_indirect_length_rule(length, n_log, flags):
    """Any table length: accepted iff 0 < len <= 16 N, a multiple of 16, and no NEXT."""
    n = 1 << n_log
    dev, drv = setup(n=n)
    req = Req(drv, spec.VIRTIO_BLK_T_FLUSH)
    (h, hl, _), (s, sl, sf) = req.segs
    room = max(2, length // 16 + 1)
    table = write_table(drv, [(h, hl, NEXT, 1), (s, sl, sf, 0)] + [(h, hl, 0, 0)] * (room - 2))
    drv.write_desc(0, table.dma, length, INDIRECT | flags, 1 % n)
    drv.publish(0)
    drv.notify()
    good = 0 < length <= 16 * n and length % 16 == 0 and not flags & NEXT
    if good and length >= 32:
        assert dev.faults == [] and req.status_byte() == spec.VIRTIO_BLK_S_OK
    elif good:  # one entry: the header only, no writable byte -> cause 9 at the head
        assert dev.faults == [(spec.FAULT_BAD_REQUEST, 0)]
    else:
        assert dev.faults == [(spec.FAULT_BAD_CHAIN, 0)]
        assert touches(dev, table) == []


# =================================================================================================
# Limits (SEG_MAX, SIZE_MAX): IOERR after the header read, whatever the type
# =================================================================================================

TYPES = [spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT, spec.VIRTIO_BLK_T_FLUSH,
         spec.VIRTIO_BLK_T_GET_ID, spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES, 77]


@pytest.mark.parametrize("req_type", TYPES)
@pytest.mark.parametrize("form", ["direct", "indirect"])
def test_too_many_descriptors_is_ioerr(req_type, form):
    """seg_max = 2: header + 2 data + status (4) is within; header + 3 data + status is over,
    and completes with IOERR after the header read, moving nothing. The driver did not
    negotiate SEG_MAX: the limit applies because the build offers it."""
    dev, drv = setup(n=8, driver=F_IND, features=Features(seg_max=2, size_max=0))
    writable = req_type in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_GET_ID)
    disk = bytes(dev.disk)
    req = Req(drv, req_type, 0, **({"read_len": 1536} if writable else {"data": bytes(48)}))
    (h, hl, hf), (d, _, df), (s, sl, sf) = req.segs
    segs = [(h, hl, hf)] + [(d + 512 * k if writable else d + 16 * k,
                             512 if writable else 16, df) for k in range(3)] + [(s, sl, sf)]
    if form == "direct":
        drv.publish(drv.chain([(a, n, bool(f)) for a, n, f in segs]))
    else:
        table = write_table(drv, linked(segs))
        publish_indirect(drv, table.dma, 16 * len(segs), index=drv.next_desc)
    start = len(dev.transactions)
    drv.notify()
    assert dev.faults == [] and req.status_byte() == spec.VIRTIO_BLK_S_IOERR
    assert drv.take_used() == [(drv.next_desc if form == "indirect" else 0, 1)]
    assert bytes(dev.disk) == disk
    assert touches(dev, req.data) == []  # nothing moved
    seq = keys(dev, start)
    header_at = seq.index(("R", h, 16))
    assert seq[header_at + 1] == ("W", s, 1)  # the status right after the header


def test_descriptor_count_at_the_limit_is_served():
    dev, drv = setup(n=8, features=Features(seg_max=2, size_max=0))
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=1024)
    (h, hl, _), (d, _, _), (s, _, _) = req.segs
    drv.publish(drv.chain([(h, hl, False), (d, 512, True), (d + 512, 512, True), (s, 1, True)]))
    drv.notify()
    assert req.status_byte() == spec.VIRTIO_BLK_S_OK
    assert drv.read_buf(req.data) == bytes(dev.disk[:1024])


@pytest.mark.parametrize(("which", "length", "status"), [
    ("data", 1024, spec.VIRTIO_BLK_S_OK), ("data", 1536, spec.VIRTIO_BLK_S_IOERR),
    ("header", 1024, spec.VIRTIO_BLK_S_OK), ("header", 1025, spec.VIRTIO_BLK_S_IOERR),
    ("status", 1025, spec.VIRTIO_BLK_S_IOERR)])
def test_descriptor_longer_than_size_max_is_ioerr(which, length, status):
    """size_max = 1024: any descriptor (header, data, status) longer than it, in an indirect
    table. The indirect descriptor itself (48 or 32 bytes) is not one of the limit's."""
    dev, drv = setup(n=8, features=Features(size_max=1024, seg_max=0))
    disk = bytes(dev.disk)
    hdr = drv.buffer(length if which == "header" else 16, readonly=True)
    drv.write_buf(hdr, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_IN, 0, 0))
    data = drv.buffer(2048)
    out = drv.buffer(length if which == "status" else 1)
    segs = [(hdr.dma, hdr.nbytes, 0)]
    if which == "data":
        segs.append((data.dma, length, WRITE))
    segs.append((out.dma, out.nbytes, WRITE))
    table = write_table(drv, linked(segs))
    publish_indirect(drv, table.dma, 16 * len(segs), index=0)
    drv.notify()
    assert dev.faults == [] and bytes(dev.disk) == disk
    assert drv.read_buf(out, out.nbytes - 1, 1)[0] == status
    moved = length if which == "data" and status == spec.VIRTIO_BLK_S_OK else 0
    if which == "status" and status == spec.VIRTIO_BLK_S_OK:
        moved = length - 1
    assert drv.take_used() == [(0, 1 + moved)]
    assert ("R", hdr.dma, 16) in keys(dev)  # the header is read either way
    if status == spec.VIRTIO_BLK_S_IOERR:
        assert touches(dev, data) == []
        assert touches(dev, out) == [("W", out.dma + out.nbytes - 1, 1)]  # the status only


def test_limits_not_offered_do_not_apply():
    dev, drv = setup(n=16, features=Features(seg_max=0, size_max=0))
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=8192)
    (h, hl, _), (d, _, _), (s, _, _) = req.segs
    drv.publish(drv.chain([(h, hl, False)] + [(d + 512 * k, 512, True) for k in range(12)]
                          + [(d + 6144, 2048, True), (s, 1, True)]))
    drv.notify()
    assert req.status_byte() == spec.VIRTIO_BLK_S_OK
    assert drv.read_buf(req.data) == bytes(dev.disk[:8192])


# =================================================================================================
# DISCARD and WRITE_ZEROES (section 5.2.6)
# =================================================================================================


def dwz_request(drv, req_type, segment: bytes, *, split: int | None = None,
                header_len: int = 16) -> Req:
    req = Req(drv, req_type, 0xDEAD, data=segment if segment else None)
    segs = list(req.segs)
    if split is not None and segment:  # the segment in two descriptors
        a, n, f = segs[1]
        segs[1:2] = [(a, split, f), (a + split, n - split, f)]
    drv.publish(drv.chain([(a, n, bool(f)) for a, n, f in segs]))
    return req


def seg(sector: int, num: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, num, flags)


DISK = 1 << 16  # 128 sectors
DWZ_CASES = {
    # (segment bytes, status, zeroed range in sectors or None)
    "ok": (seg(3, 5), spec.VIRTIO_BLK_S_OK, (3, 8)),
    "ok_last_sector": (seg(127, 1), spec.VIRTIO_BLK_S_OK, (127, 128)),
    "ok_whole_disk": (seg(0, 128), spec.VIRTIO_BLK_S_OK, (0, 128)),
    "zero_sectors_past_the_end": (seg(200, 0), spec.VIRTIO_BLK_S_IOERR, None),
    "ok_zero_sectors": (seg(5, 0), spec.VIRTIO_BLK_S_OK, (5, 5)),
    "no_segment": (b"", spec.VIRTIO_BLK_S_IOERR, None),
    "short_segment": (seg(3, 5)[:8], spec.VIRTIO_BLK_S_IOERR, None),
    "not_multiple_of_16": (seg(3, 5) + b"\0" * 4, spec.VIRTIO_BLK_S_IOERR, None),
    "two_segments": (seg(3, 5) + seg(9, 1), spec.VIRTIO_BLK_S_IOERR, None),
    "more_than_max_sectors": (seg(0, 129), spec.VIRTIO_BLK_S_IOERR, None),
    "past_the_end": (seg(120, 9), spec.VIRTIO_BLK_S_IOERR, None),
    "sector_overflows": (seg(2**64 - 1, 1), spec.VIRTIO_BLK_S_IOERR, None),
    # IOERR checks come before the flag checks
    "too_many_and_bad_flags": (seg(0, 129, 2), spec.VIRTIO_BLK_S_IOERR, None),
    "past_end_and_unmap": (seg(127, 2, 1), spec.VIRTIO_BLK_S_IOERR, None),
    "unknown_flag": (seg(3, 5, 2), spec.VIRTIO_BLK_S_UNSUPP, None),
    "unknown_high_flag": (seg(3, 5, 1 << 31 | 1), spec.VIRTIO_BLK_S_UNSUPP, None),
    "unmap": (seg(3, 5, 1), "unmap", (3, 8)),  # DISCARD: UNSUPP; WRITE_ZEROES: OK, zeroes
}


@pytest.mark.parametrize("name", DWZ_CASES)
@pytest.mark.parametrize("req_type", [spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES],
                         ids=["discard", "write_zeroes"])
def test_discard_and_write_zeroes_status(name, req_type):
    segment, status, zeroed = DWZ_CASES[name]
    if status == "unmap":
        if req_type == spec.VIRTIO_BLK_T_DISCARD:
            status, zeroed = spec.VIRTIO_BLK_S_UNSUPP, None
        else:
            status = spec.VIRTIO_BLK_S_OK
    dev, drv = setup(n=8, disk_bytes=DISK)
    dev.disk[:] = b"\x5a" * DISK
    req = dwz_request(drv, req_type, segment)
    drv.notify()
    assert dev.faults == [] and req.status_byte() == status
    assert drv.take_used() == [(0, 1)]  # written = 0
    want = bytearray(b"\x5a" * DISK)
    if zeroed is not None and status == spec.VIRTIO_BLK_S_OK:
        want[zeroed[0] * 512 : zeroed[1] * 512] = bytes(512 * (zeroed[1] - zeroed[0]))
    assert dev.disk == want
    seg_reads = touches(dev, req.data) if req.data else []
    if len(segment) == 16:
        assert seg_reads == [("R", req.data.dma, 16)]  # the segment, read once
    else:
        assert seg_reads == []  # IOERR without reading it


def test_segment_split_across_descriptors_is_read_per_descriptor_share():
    dev, drv = setup(n=8)
    req = dwz_request(drv, spec.VIRTIO_BLK_T_WRITE_ZEROES, seg(10, 2), split=6)
    drv.notify()
    assert req.status_byte() == spec.VIRTIO_BLK_S_OK
    a = req.data.dma
    assert touches(dev, req.data) == [("R", a, 6), ("R", a + 6, 10)]
    assert bytes(dev.disk[10 * 512 : 12 * 512]) == bytes(1024)
    assert dev.disk[12 * 512] == spec.ramdisk_init(12 * 512 + 1)[-1]


def test_segment_after_a_longer_readable_range():
    """Readable bytes [16, 32) when the header descriptor carries 24 bytes: the segment is the
    header's last 8 bytes and 8 of the next descriptor."""
    dev, drv = setup(n=8)
    body = seg(2, 1)
    hdr = drv.buffer(24, readonly=True)
    drv.write_buf(hdr, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_DISCARD, 0, 0) + body[:8])
    rest = drv.buffer(8, readonly=True)
    drv.write_buf(rest, body[8:])
    status = drv.buffer(1)
    drv.publish(drv.chain([(hdr.dma, 24, False), (rest.dma, 8, False), (status.dma, 1, True)]))
    drv.notify()
    assert drv.read_buf(status)[0] == spec.VIRTIO_BLK_S_OK
    assert keys(dev)[5:8] == [("R", hdr.dma, 16), ("R", hdr.dma + 16, 8), ("R", rest.dma, 8)]
    assert bytes(dev.disk[1024:1536]) == bytes(512)


@pytest.mark.parametrize("req_type", [spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES])
def test_types_not_offered_are_unsupp_without_reading(req_type):
    for features in (Features.none(), Features(discard=False, write_zeroes=False)):
        dev, drv = setup(n=8, features=features)
        disk = bytes(dev.disk)
        req = dwz_request(drv, req_type, seg(3, 5))
        drv.notify()
        assert req.status_byte() == spec.VIRTIO_BLK_S_UNSUPP and bytes(dev.disk) == disk
        assert touches(dev, req.data) == []


def test_discard_offered_alone():
    dev, drv = setup(n=8, features=Features(write_zeroes=False))
    d = dwz_request(drv, spec.VIRTIO_BLK_T_DISCARD, seg(1, 1))
    w = dwz_request(drv, spec.VIRTIO_BLK_T_WRITE_ZEROES, seg(2, 1))
    drv.notify()
    assert (d.status_byte(), w.status_byte()) == (spec.VIRTIO_BLK_S_OK, spec.VIRTIO_BLK_S_UNSUPP)
    assert bytes(dev.disk[512:1024]) == bytes(512) and any(dev.disk[1024:1536])


# =================================================================================================
# EVENT_IDX (sections 2.7.7.2, 2.7.10)
# =================================================================================================


@given(event=st.integers(0, U16), old=st.integers(0, U16), k=st.integers(0, U16))
def test_vring_need_event_is_used_event_in_the_new_entries(event, old, k):
    """An interrupt is due iff used_event is one of old, old + 1, ..., new - 1 (mod 2**16)."""
    new = (old + k) & U16
    assert vring_need_event(event, new, old) == ((event - old) & U16 < k)


def test_event_idx_transactions_and_avail_event_once():
    dev, drv = setup(n=8)
    a, u = drv.avail.dma, drv.used.dma
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    tail = keys(dev)[5:]
    assert tail == [("W", tail[0][1], 1), ("W", u + 4, 8), ("W", u + 2, 2),
                    ("R", a + 4 + 16, 2),  # used_event, after the used index
                    ("R", a, 4), ("W", u + 4 + 64, 2),  # nothing pending: avail_event = 1
                    ("R", a, 4)]  # a new round: still nothing, avail_event unchanged: idle
    assert dev.transactions[-2].data == b"\x01\x00"
    assert dev.irq  # used_event 0 was passed: 0 in [0, 1)
    start = len(dev.transactions)
    drv.notify()  # nothing new: one poll, no rewrite
    assert keys(dev, start) == [("R", a, 4)]


def test_without_event_idx_negotiated_the_foundation_sequence():
    """The build offers EVENT_IDX, the driver does not take it: no used_event read, no
    avail_event write, NO_INTERRUPT honoured."""
    dev, drv = setup(n=8, driver=0)
    assert not negotiated(dev) & F_EVT
    drv.set_avail_flags(spec.VIRTQ_AVAIL_F_NO_INTERRUPT)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert [k for k, _, _ in keys(dev)] == ["R", "R", "R", "R", "R", "W", "W", "W", "R"]
    assert not dev.irq


def test_no_interrupt_flag_is_ignored_with_event_idx():
    dev, drv = setup(n=8)
    drv.set_avail_flags(spec.VIRTQ_AVAIL_F_NO_INTERRUPT)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.irq  # used_event = 0: due, whatever avail.flags says


def put_used_event(drv, value: int) -> None:
    drv.write_buf(drv.avail, (value & U16).to_bytes(2, "little"), drv.ring.used_event)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, U16), k=st.integers(1, 8), rel=st.integers(-3, 10))
def test_interrupt_decision_around_the_wrap(start, k, rel):
    """``k`` entries served in one round from ``start`` (indices near 2**16 included): one
    used_event read, and an interrupt iff used_event is in [start, start + k)."""
    dev, drv = setup(n=8)
    dev.last_avail_idx = dev.used_idx = dev.signalled_used = dev.avail_event_pub = start
    drv.set_avail_idx(start)
    drv.used_seen = start
    event = (start + rel) & U16
    put_used_event(drv, event)
    for _ in range(k):
        drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    used_event_reads = [t for t in keys(dev) if t == ("R", drv.avail.dma + 4 + 16, 2)]
    assert len(used_event_reads) == 1
    assert dev.irq == (0 <= rel < k)
    assert dev.signalled_used == dev.used_idx == (start + k) & U16
    avail_event = [t.data for t in dev.transactions if t.kind == "W" and
                   t.addr == drv.used.dma + 4 + 64]
    assert avail_event == [((start + k) & U16).to_bytes(2, "little")]


def test_signalled_used_carries_across_rounds():
    """Round 1 serves one entry with used_event far ahead (no interrupt); round 2 serves one
    more with used_event = 0, already passed in round 1: still no interrupt (Linux's
    vring_need_event over (signalled_used, used_idx])."""
    dev, drv = setup(n=8)
    put_used_event(drv, 100)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert not dev.irq and dev.signalled_used == 1
    put_used_event(drv, 0)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert not dev.irq and dev.signalled_used == 2
    put_used_event(drv, 2)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.irq


def test_poll_after_avail_event_sees_an_entry_added_without_notify():
    """The driver adds an entry after the device's last poll, reads avail_event (stale) and
    does not notify; the poll after the avail_event write serves it."""
    dev, drv = setup(n=8)
    added = []

    def hook(txn):
        if txn.kind == "W" and txn.addr == drv.used.dma + 4 + 64 and not added:
            added.append(drv.request(spec.VIRTIO_BLK_T_FLUSH))

    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    dev.on_transaction = hook
    drv.notify()
    assert added and dev.completed == 2 and dev.avail_event_pub == 2
    assert [t.data for t in dev.transactions if t.kind == "W"
            and t.addr == drv.used.dma + 4 + 64] == [b"\x01\x00", b"\x02\x00"]


def test_failed_avail_event_write_faults_cause_6():
    holder = {}
    dev, drv = setup(n=8, bus_error=lambda t: t.kind == "W" and t.addr == holder.get("a"))
    holder["a"] = drv.used.dma + 4 + 64
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_OK
    assert_fault(dev, spec.FAULT_BUS_ERROR, holder["a"])
    assert dev.avail_event_pub == 0 and keys(dev)[-1] == ("W", holder["a"], 2)


def test_a_fault_skips_the_round_end_decision():
    dev, drv = setup(n=8)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.publish(9)  # head 9 >= N: cause 7 on the second entry
    drv.notify()
    assert dev.completed == 1 and dev.faults == [(spec.FAULT_BAD_CHAIN, 9)]
    assert ("R", drv.avail.dma + 4 + 16, 2) not in keys(dev)
    assert dev.signalled_used == 0 and not dev.interrupt_status & spec.INT_USED_BUFFER


def test_ring_and_table_descriptors_count_together_without_a_loop():
    """header (ring) -> INDIRECT -> a linear table of N = 8 entries: the table's last entry is
    descriptor number 9 = N + 1 (cause 7, its table index 7), though no entry repeats."""
    dev, drv = setup(n=8)
    req = Req(drv, spec.VIRTIO_BLK_T_IN, 0, read_len=512)
    (h, hl, _), (d, _, df), (s, sl, sf) = req.segs
    table = write_table(drv, linked([(d, 64, df)] * 7 + [(s, sl, sf)]))
    drv.write_desc(0, h, hl, NEXT, 1)
    drv.write_desc(1, table.dma, 16 * 8, INDIRECT, 0)
    drv.publish(0)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_CHAIN, 7)
    assert touches(dev, table) == [("R", table.dma, 128)]  # read whole, once


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(out=st.booleans(), sectors=st.integers(1, 6), cuts=st.lists(st.integers(1, 3071),
       max_size=5, unique=True), handle_mode=st.booleans(), sector=st.integers(0, 130))
def test_indirect_and_direct_chains_make_the_same_data_accesses(out, sectors, cuts, handle_mode,
                                                                sector):
    """Any request split into any descriptors: through a table or as a direct chain, the same
    accesses after the chain walk (header, data, status, used ring), the same disk and the same
    used element (head 0 in both forms); only the descriptor reads differ."""
    length = 512 * sectors
    edges = sorted({0, length, *(c for c in cuts if c < length)})
    runs = []
    for form in ("direct", "indirect"):
        dev, drv = setup(n=8, handle_mode=handle_mode, features=Features(seg_max=0))
        payload = bytes((i * 31 + sector) & 0xFF for i in range(length))
        req = Req(drv, spec.VIRTIO_BLK_T_OUT if out else spec.VIRTIO_BLK_T_IN, sector,
                  **({"data": payload} if out else {"read_len": length}))
        (h, hl, hf), (d, _, df), (s, sl, sf) = req.segs
        segs = ([(h, hl, hf)] + [(d + a, b - a, df) for a, b in itertools.pairwise(edges)]
                + [(s, sl, sf)])
        if form == "direct":
            drv.publish(drv.chain([(a, n, bool(f)) for a, n, f in segs]))
        else:
            table = write_table(drv, linked(segs))
            publish_indirect(drv, table.dma, 16 * len(segs), index=0)
        drv.notify()
        header_at = keys(dev).index(("R", req.header.phys(0), 16))
        runs.append(([(t.kind, t.addr, t.nbytes, t.data) for t in dev.transactions[header_at:]],
                     bytes(dev.disk), drv.take_used(), req.status_byte(), drv.read_buf(req.data),
                     dev.faults))
    assert runs[0] == runs[1]
    assert runs[0][5] == [] and len(runs[0][2]) == 1


# =================================================================================================
# Random chains with indirect tables against a walk written out from step 3.2
# =================================================================================================


def walk_from_the_contract(mem, qdesc: int, n: int, head: int, indirect_ok: bool):
    """Step 3.2 read straight from guest memory (GPA mode): ``("fault", index, reads)``,
    ``("bus_error", None, reads)`` (the table is not all inside memory) or
    ``("ok", descriptors, reads)``; ``reads`` are the accesses in order, ``(addr, nbytes)``:
    16 bytes per ring descriptor, the whole table (``len`` bytes) once."""
    reads, count, total, seen_writable, descs = [], 0, 0, False, []
    limit, table, i = n, None, head
    while True:
        if i >= limit or count == n:
            return "fault", i, reads
        if table is None:
            reads.append((qdesc + 16 * i, 16))
            raw = mem.read(qdesc + 16 * i, 16)
        else:
            raw = table[16 * i : 16 * i + 16]
        addr, length, flags, nxt = struct.unpack("<QIHH", raw)
        if flags & INDIRECT:
            if (not indirect_ok or table is not None or flags & NEXT or length == 0
                    or length % 16 or length > 16 * n or addr + length > 2**64):
                return "fault", i, reads
            reads.append((addr, length))
            if not mem.contains(addr, length):
                return "bus_error", None, reads
            table, limit, i = mem.read(addr, length), length // 16, 0
            continue
        if (not flags & WRITE and seen_writable) or addr + length > 2**64:
            return "fault", i, reads
        total += length
        if total > 0xFFFF_FFFF:
            return "fault", i, reads
        seen_writable |= bool(flags & WRITE)
        count += 1
        descs.append((addr, length, flags))
        if not flags & NEXT:
            return "ok", descs, reads
        i = nxt


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n_log=st.integers(0, 3),
       indirect_ok=st.sampled_from([True, True, True, False]))
def test_random_chains_walk_as_step_3_2_says(data, n_log, indirect_ok):
    n = 1 << n_log
    dev, drv = setup(n=n, driver=(F_IND | F_EVT) if indirect_ok else F_EVT,
                     features=Features(seg_max=0, size_max=0))
    tables = [drv.buffer(16 * 9, readonly=True) for _ in range(2)]
    hdr = drv.buffer(64, readonly=True)
    drv.write_buf(hdr, virtio.BLK_HEADER.pack(spec.VIRTIO_BLK_T_FLUSH, 0, 0) * 4)
    status = drv.buffer(64)
    addrs = [hdr.dma, hdr.dma + 16, status.dma, status.dma + 32, 2**64 - 16]
    addrs += [t.dma + 16 * k for t in tables for k in (0, 1, 2)]
    entry = st.tuples(
        st.sampled_from(addrs),
        st.sampled_from([0, 1, 8, 16, 16, 32, 48, 16 * n, 16 * n + 16, 40]),
        st.sampled_from([0, NEXT, WRITE, NEXT | WRITE, INDIRECT, INDIRECT | NEXT,
                         INDIRECT | WRITE, NEXT, WRITE, NEXT | WRITE]),
        st.integers(0, 9))
    for i in range(n):
        drv.write_desc(i, *data.draw(entry))
    head = data.draw(st.integers(0, n))
    t_len = data.draw(st.integers(1, n))  # the entries of a well-formed table at the head
    if head < n and data.draw(st.integers(0, 3)):
        drv.write_desc(head, tables[0].dma, 16 * t_len,
                       data.draw(st.sampled_from([INDIRECT, INDIRECT | WRITE])), 0)
    table_entry = st.one_of(entry, *[st.tuples(  # mostly linked entries, some out of range
        st.sampled_from(addrs[:4]), st.sampled_from([1, 16, 16, 32, 0]),
        st.sampled_from([NEXT, NEXT, NEXT | WRITE, WRITE, 0]), st.integers(0, t_len))] * 3)
    for t in tables:
        for k in range(9):
            drv.write_buf(t, virtio.DESC.pack(*data.draw(table_entry)), 16 * k)
    drv.publish(head)
    drv.notify()
    verdict, what, reads = walk_from_the_contract(drv.mem, drv.desc.dma, n, head, indirect_ok)
    ring = range(drv.desc.dma, drv.desc.dma + 16 * n)
    event(f"{verdict}, {'a' if any(a not in ring for a, _ in reads) else 'no'} table read")
    # every table here lies inside one page and one burst window: one transaction per access
    got = [(t.addr, t.nbytes) for t in dev.transactions[2 : 2 + len(reads)]]
    assert got == reads
    if verdict == "bus_error":  # the table read's fault, before any entry is checked
        assert [f.cause for f in dev.faults] == [spec.FAULT_BUS_ERROR]
        assert len(dev.transactions) == 2 + len(reads)
    elif verdict == "fault":
        assert dev.faults == [(spec.FAULT_BAD_CHAIN, what)]
        assert len(dev.transactions) == 2 + len(reads)
    else:
        assert all(f.cause != spec.FAULT_BAD_CHAIN for f in dev.faults)
        r = sum(ln for _, ln, f in what if not f & WRITE)
        w = sum(ln for _, ln, f in what if f & WRITE)
        if r < 16 or w < 1:
            assert dev.faults == [(spec.FAULT_BAD_REQUEST, head)]
        elif not dev.faults:  # the header's address decides the rest; a bus error may end it
            assert dev.completed == 1
