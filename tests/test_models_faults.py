"""Faults of the reference device (docs/architecture.md, "Faults"): every cause 1..9."""

from __future__ import annotations

import struct

import pytest

from models import spec
from models.features import Features
from models.grant import GrantEntry
from verif.harness import make as _make


def make(**kw):
    """The harness's device and driver, built as the foundation's device (``Features.none()``)
    unless ``features`` is given: these tests are the foundation's behaviour."""
    return _make(**{"features": Features.none(), **kw})

ENTRIES = 64


def hv_fault(dev) -> tuple[int, int, int, int]:
    h = dev.hv
    addr = h.read(spec.HV_FAULT_ADDR_LO) | h.read(spec.HV_FAULT_ADDR_HI) << 32
    return (
        h.read(spec.HV_FAULT_STATUS),
        h.read(spec.HV_FAULT_CAUSE),
        addr,
        h.read(spec.HV_FAULT_COUNT),
    )


def assert_fault(dev, cause: int, addr: int, *, count: int = 1) -> None:
    assert dev.faults[-1] == (cause, addr)
    assert len(dev.faults) == count
    assert hv_fault(dev) == (1, cause, addr, count)
    assert dev.guest.read(spec.MMIO_STATUS) & spec.STATUS_DEVICE_NEEDS_RESET
    assert dev.guest.read(spec.MMIO_INTERRUPT_STATUS) & spec.INT_CONFIG_CHANGE
    assert dev.irq and dev.halted


def untouched(dev, frame: int) -> bool:
    return all(t.addr >> 12 != frame and (t.end - 1) >> 12 != frame for t in dev.transactions)


def data_write_frames(dev) -> set[int]:
    return {t.addr >> 12 for t in dev.transactions if t.kind == "W"}


# --- causes 1-5: translation ----------------------------------------------------------------
def _regrant(drv, req, ref: int, entry: GrantEntry) -> None:
    """Overwrite grant ``ref`` with ``entry``, then publish ``req`` and notify."""
    drv.set_grant(ref, entry)
    drv.publish(req.head)
    drv.notify()


def test_cause_1_queue_address_not_a_handle():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    gpa = drv.avail.phys(0)
    drv.program_queue(drv.desc.dma, gpa, drv.used.dma, 8)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert_fault(dev, spec.FAULT_NOT_HANDLE, gpa)
    assert dev.transactions == []
    assert dev.translations == 1


def test_cause_1_buffer_not_a_handle():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=512, publish=False)
    gpa = req.data.phys(0)
    drv.write_desc(1, gpa, 512, spec.VIRTQ_DESC_F_WRITE | spec.VIRTQ_DESC_F_NEXT, 2)
    drv.publish(req.head)
    drv.notify()
    assert_fault(dev, spec.FAULT_NOT_HANDLE, gpa)
    assert untouched(dev, gpa >> 12)
    # poll, ring, 3 descriptors, header were performed; nothing after the fault
    assert [t.kind for t in dev.transactions] == ["R"] * 6
    assert drv.used_idx() == 0 and dev.completed == 0


def test_cause_2_reference_outside_the_table():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=512, publish=False)
    bad = spec.make_handle(ENTRIES, 0x30)
    drv.write_desc(1, bad, 512, spec.VIRTQ_DESC_F_WRITE | spec.VIRTQ_DESC_F_NEXT, 2)
    drv.publish(req.head)
    drv.notify()
    assert_fault(dev, spec.FAULT_REF_RANGE, bad)


def test_cause_2_on_the_second_page_after_a_performed_prefix():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    frame = drv.alloc_frames(1)[0]
    drv.grant(frame, ref=ENTRIES - 1)
    start = spec.make_handle(ENTRIES - 1, 0xC00)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=2048, publish=False)
    drv.write_desc(1, start, 2048, spec.VIRTQ_DESC_F_WRITE | spec.VIRTQ_DESC_F_NEXT, 2)
    drv.publish(req.head)
    drv.notify()
    assert_fault(dev, spec.FAULT_REF_RANGE, spec.make_handle(ENTRIES, 0))
    last = dev.transactions[-1]
    assert (last.kind, last.addr, last.nbytes) == ("W", frame << 12 | 0xC00, 0x400)
    assert last.data == bytes(dev.disk[:0x400])


@pytest.mark.parametrize("flags", [0, spec.GTF_accept_transfer, 3, spec.GTF_readonly])
def test_cause_3_entry_not_permit_access(flags):
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_OUT, data=bytes(512), publish=False)
    ref = req.data.refs[0]
    frame = req.data.frames[0]
    _regrant(drv, req, ref, GrantEntry(flags=flags, domid=drv.domid, frame=frame))
    assert_fault(dev, spec.FAULT_NOT_PERMITTED, req.data.dma)
    assert untouched(dev, frame)


def test_cause_4_wrong_domain_on_the_poll():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    dev.hv.write(spec.HV_DOMID, drv.domid + 1)
    drv.notify()
    assert_fault(dev, spec.FAULT_WRONG_DOMAIN, drv.avail.dma)
    assert dev.transactions == []


def test_cause_4_wrong_domain_on_the_header():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    frame = req.header.frames[0]
    _regrant(drv, req, req.header.refs[0], GrantEntry.permit(drv.domid + 1, frame))
    assert_fault(dev, spec.FAULT_WRONG_DOMAIN, req.header.dma)
    assert untouched(dev, frame)


def test_cause_5_device_write_to_read_only_data_buffer():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=1024, data_offset=0x100, publish=False)
    frame = req.data.frames[0]
    _regrant(drv, req, req.data.refs[0], GrantEntry.permit(drv.domid, frame, readonly=True))
    assert_fault(dev, spec.FAULT_READONLY, req.data.dma)
    assert untouched(dev, frame)
    assert drv.status_of(req) == 0xFF


def test_cause_5_on_the_second_page():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=1024, data_offset=0xE00, publish=False)
    f0, f1 = req.data.frames
    _regrant(drv, req, req.data.refs[1], GrantEntry.permit(drv.domid, f1, readonly=True))
    assert_fault(dev, spec.FAULT_READONLY, spec.make_handle(req.data.refs[1], 0))
    assert f0 in data_write_frames(dev) and untouched(dev, f1)
    assert drv.read_buf(req.data, 0, 0x200) == bytes(dev.disk[:0x200])


def test_cause_5_read_only_used_ring():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    drv.set_grant(drv.used.refs[0], GrantEntry.permit(drv.domid, drv.used.frames[0], readonly=True))
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert_fault(dev, spec.FAULT_READONLY, (drv.used.dma + 4) & spec.ADDR_MASK)
    assert drv.status_of(req) == spec.VIRTIO_BLK_S_OK  # the status byte was written before
    assert untouched(dev, drv.used.frames[0])


# --- cause 6: bus errors -------------------------------------------------------------------
def test_cause_6_decerr_outside_memory_gpa():
    dev, drv = make(mem_size=1 << 20)
    req = drv.request(spec.VIRTIO_BLK_T_OUT, data=bytes(512), publish=False)
    far = 0x1_0000_0000
    drv.write_desc(1, far, 512, spec.VIRTQ_DESC_F_NEXT, 2)
    drv.publish(req.head)
    drv.notify()
    assert_fault(dev, spec.FAULT_BUS_ERROR, far)
    last = dev.transactions[-1]
    assert (last.kind, last.addr, last.nbytes, last.error) == ("R", far, 512, True)
    assert last.data is None
    assert sum(t.error for t in dev.transactions) == 1


def test_cause_6_transaction_straddling_the_end_of_memory():
    dev, drv = make(mem_size=1 << 20)
    req = drv.request(spec.VIRTIO_BLK_T_IN, read_len=1024, publish=False)
    start = (1 << 20) - 512
    drv.write_desc(1, start, 1024, spec.VIRTQ_DESC_F_WRITE | spec.VIRTQ_DESC_F_NEXT, 2)
    drv.publish(req.head)
    before = dev.mem.snapshot()
    drv.notify()
    # [start, 1 MiB) is one burst inside memory; the next page is outside
    assert_fault(dev, spec.FAULT_BUS_ERROR, 1 << 20)
    assert dev.mem.read(start, 512) == bytes(dev.disk[:512]) != before[start:]


def test_cause_6_decerr_for_a_granted_frame_outside_memory():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    _regrant(drv, req, req.status.refs[0], GrantEntry.permit(drv.domid, 0xFFFF_FFFF))
    assert_fault(dev, spec.FAULT_BUS_ERROR, 0xFFFF_FFFF << 12)
    assert dev.transactions[-1].key() == ("W", 0xFFFF_FFFF << 12, 1, b"\x00")


def test_cause_6_slverr_on_a_write_leaves_memory_unchanged():
    status_addr = []

    def err(txn):
        return txn.kind == "W" and txn.addr in status_addr

    dev, drv = make(bus_error=err)
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    status_addr.append(req.status.phys(0))
    drv.notify()
    assert_fault(dev, spec.FAULT_BUS_ERROR, req.status.phys(0))
    assert drv.status_of(req) == 0xFF
    assert dev.transactions[-1].error and drv.used_idx() == 0


def test_cause_6_read_error_mid_transfer_keeps_earlier_bursts_only():
    """T_OUT streams into the disk: bursts before the failing one land, the failing one's data
    is discarded, nothing after it is issued."""
    fail_at = []

    def err(txn):
        return txn.kind == "R" and txn.addr in fail_at

    dev, drv = make(bus_error=err, data_width=32)
    payload = bytes([0x77]) * 4096
    req = drv.request(spec.VIRTIO_BLK_T_OUT, 0, data=payload, publish=False)
    fail_at.append(req.data.phys(2048))
    drv.publish(req.head)
    old = bytes(dev.disk[:4096])
    drv.notify()
    assert_fault(dev, spec.FAULT_BUS_ERROR, req.data.phys(2048))
    assert bytes(dev.disk[:2048]) == payload[:2048]
    assert bytes(dev.disk[2048:4096]) == old[2048:]
    assert dev.transactions[-1].key() == ("R", req.data.phys(2048), 1024, None)


# --- cause 7: malformed descriptor chain ----------------------------------------------------
def _chain_fault(setup, *, n=4, handle_mode=False):
    dev, drv = make(n=n, handle_mode=handle_mode, entries=ENTRIES)
    hdr = drv.buffer(16, readonly=True)
    drv.write_buf(hdr, struct.pack("<IIQ", spec.VIRTIO_BLK_T_FLUSH, 0, 0))
    st = drv.buffer(1)
    head = setup(drv, hdr.dma, st.dma)
    drv.publish(head)
    drv.notify()
    return dev, drv


NEXT = spec.VIRTQ_DESC_F_NEXT
WRITE = spec.VIRTQ_DESC_F_WRITE


def test_cause_7_head_outside_the_queue():
    dev, _ = _chain_fault(lambda d, h, s: 4)
    assert_fault(dev, spec.FAULT_BAD_CHAIN, 4)
    assert [t.nbytes for t in dev.transactions] == [4, 2]  # no descriptor read


def test_cause_7_loop_detected_at_descriptor_n_plus_1():
    def setup(d, h, s):
        for i in range(4):
            d.write_desc(i, h, 16, NEXT, (i + 1) % 4)
        return 2

    dev, _ = _chain_fault(setup)
    assert_fault(dev, spec.FAULT_BAD_CHAIN, 2)
    desc_reads = [t.addr - dev.queue_desc for t in dev.transactions if t.nbytes == 16]
    assert desc_reads == [32, 48, 0, 16]  # N descriptors read, not the (N+1)th


def test_cause_7_self_loop():
    def setup(d, h, s):
        d.write_desc(1, h, 16, NEXT, 1)
        return 1

    dev, _ = _chain_fault(setup)
    assert_fault(dev, spec.FAULT_BAD_CHAIN, 1)
    assert sum(t.nbytes == 16 for t in dev.transactions) == 4


# A chain: (index, buffer, length, flags[, next]) a descriptor, the first one the head; the buffer
# "h" (the flush header), "h+8", "s" (the status byte) or an address.
INDIRECT = spec.VIRTQ_DESC_F_INDIRECT
CHAINS = {
    "cause_7_next_outside_the_queue":
        ([(0, "h", 16, NEXT, 0xFFFF)], spec.FAULT_BAD_CHAIN, 0xFFFF, [4, 2, 16]),
    "cause_7_indirect":
        ([(0, "h", 16, NEXT, 3), (3, "s", 16, INDIRECT)], spec.FAULT_BAD_CHAIN, 3, None),
    "cause_7_readable_after_writable":
        ([(0, "s", 1, WRITE | NEXT, 1), (1, "h", 16, 0)], spec.FAULT_BAD_CHAIN, 1, None),
    "cause_7_readable_after_empty_writable":
        ([(0, "h", 16, NEXT, 1), (1, "s", 0, WRITE | NEXT, 2), (2, "h", 0, NEXT, 3),
          (3, "s", 1, WRITE)], spec.FAULT_BAD_CHAIN, 2, None),
    "cause_7_buffer_wraps_the_address_space":
        ([(0, "h", 16, NEXT, 1), (1, 2**64 - 8, 9, WRITE)], spec.FAULT_BAD_CHAIN, 1, None),
    # well-formed: the status write to 2**64 - 1 is outside memory -> bus error
    "buffer_ending_exactly_at_2_64_is_well_formed":
        ([(0, "h", 16, NEXT, 1), (1, 2**64 - 8, 8, WRITE)], spec.FAULT_BUS_ERROR, 2**64 - 1,
         None),
    # total 2**32 - 1 after the second descriptor: still fine; 2**32 after the third
    "cause_7_total_length_exceeds_u32":
        ([(0, "h", 16, NEXT, 1), (1, 0x1000, 0xFFFF_FFEF, NEXT, 2), (2, "s", 1, WRITE)],
         spec.FAULT_BAD_CHAIN, 2, None),
    # pass 1 validates the whole chain before the header is read
    "cause_7_is_found_before_any_data_access":
        ([(0, "h", 16, NEXT, 1), (1, "s", 1, WRITE | NEXT, 2), (2, "s", 1, INDIRECT | WRITE)],
         spec.FAULT_BAD_CHAIN, 2, [4, 2, 16, 16, 16]),
    "cause_9_short_header":
        ([(0, "h", 8, NEXT, 1), (1, "h+8", 7, NEXT, 2), (2, "s", 1, WRITE)],
         spec.FAULT_BAD_REQUEST, 0, [4, 2, 16, 16, 16]),
    "cause_9_no_writable_byte":
        ([(3, "h", 16, NEXT, 2), (2, "s", 0, WRITE)], spec.FAULT_BAD_REQUEST, 3, None),
}


@pytest.mark.parametrize(("chain", "cause", "addr", "nbytes"), CHAINS.values(), ids=CHAINS)
def test_malformed_chain(chain, cause, addr, nbytes):
    def setup(d, h, s):
        for i, buf, length, flags, *nxt in chain:
            d.write_desc(i, {"h": h, "h+8": h + 8, "s": s}.get(buf, buf), length, flags, *nxt)
        return chain[0][0]

    dev, _ = _chain_fault(setup)
    assert_fault(dev, cause, addr)
    if nbytes is not None:
        assert [t.nbytes for t in dev.transactions] == nbytes


# --- cause 8: malformed ring ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num", "desc_off", "drv_off", "dev_off", "addr_of"),
    [
        (3, 0, 0, 0, "num"),
        (0, 0, 0, 0, "num"),
        (512, 0, 0, 0, "num"),
        (3, 8, 1, 2, "num"),  # the first violation wins
        (8, 8, 1, 2, "desc"),
        (8, 0, 1, 2, "driver"),
        (8, 0, 0, 2, "device"),
    ],
)
def test_cause_8_queue_check(num, desc_off, drv_off, dev_off, addr_of):
    dev, drv = make()
    addrs = {
        "desc": drv.desc.dma + desc_off,
        "driver": drv.avail.dma + drv_off,
        "device": drv.used.dma + dev_off,
    }
    drv.program_queue(addrs["desc"], addrs["driver"], addrs["device"], num)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_RING, num if addr_of == "num" else addrs[addr_of])
    assert dev.transactions == []


def test_cause_8_too_many_pending():
    dev, drv = make(n=4)
    drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    drv.set_avail_idx(5)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_RING, 5)
    assert [t.nbytes for t in dev.transactions] == [4]


def test_cause_8_pending_after_a_round():
    dev, drv = make(n=4)
    r = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    drv.notify()
    assert dev.completed == 1
    drv.set_avail_idx(0xFFFF)  # (0xFFFF - 1) mod 2**16 > 4
    drv.set_ring(1, r.head)
    drv.notify()
    assert_fault(dev, spec.FAULT_BAD_RING, 0xFFFF)


# --- fault bookkeeping --------------------------------------------------------------------
def test_entries_before_the_fault_stay_consumed_and_engine_halts():
    dev, drv = make(handle_mode=True, entries=ENTRIES, n=16)
    a = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    b = drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=20)
    bad = drv.request(spec.VIRTIO_BLK_T_FLUSH, publish=False)
    drv.set_grant(bad.status.refs[0], GrantEntry())
    drv.publish(bad.head)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)  # after the faulting one: never reached
    drv.notify()
    assert_fault(dev, spec.FAULT_NOT_PERMITTED, bad.status.dma)
    assert drv.take_used() == [(a.head, 1), (b.head, 21)]
    assert dev.last_avail_idx == 2 and dev.completed == 2
    assert dev.guest.read(spec.MMIO_INTERRUPT_STATUS) == 3
    # halted: an accepted notify does nothing
    n = len(dev.transactions)
    drv.notify()
    assert len(dev.transactions) == n
    # the driver cannot clear DEVICE_NEEDS_RESET except by resetting
    dev.guest.write(spec.MMIO_STATUS, 0xF)
    assert dev.guest.read(spec.MMIO_STATUS) == 0x4F
    dev.guest.write(spec.MMIO_INTERRUPT_ACK, 3)
    assert not dev.irq
    drv.notify()
    assert len(dev.transactions) == n


def test_recovery_after_driver_reset_and_first_fault_latch():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    drv.request(spec.VIRTIO_BLK_T_FLUSH)
    dev.hv.write(spec.HV_DOMID, 9)
    drv.notify()
    first = drv.avail.dma
    assert_fault(dev, spec.FAULT_WRONG_DOMAIN, first)
    # driver reset: guest state back to reset values, fault registers untouched
    dev.guest.write(spec.MMIO_STATUS, 0)
    assert dev.guest.read(spec.MMIO_STATUS) == 0 and not dev.irq and not dev.halted
    assert hv_fault(dev) == (1, spec.FAULT_WRONG_DOMAIN, first, 1)
    # second fault: counted, not latched
    drv.setup(8)
    drv.program_queue(drv.desc.dma, drv.avail.dma, drv.used.dma, 3)
    drv.notify()
    assert dev.faults[-1] == (spec.FAULT_BAD_RING, 3)
    assert hv_fault(dev) == (1, spec.FAULT_WRONG_DOMAIN, first, 2)
    # hypervisor clears the latch; the next fault latches again
    dev.hv.write(spec.HV_FAULT_STATUS, 1)
    dev.guest.write(spec.MMIO_STATUS, 0)
    drv.setup(8)
    drv.program_queue(drv.desc.dma, drv.avail.dma, drv.used.dma, 0)
    drv.notify()
    assert hv_fault(dev) == (1, spec.FAULT_BAD_RING, 0, 3)
    # fix everything and recover
    dev.hv.write(spec.HV_DOMID, drv.domid)
    dev.guest.write(spec.MMIO_STATUS, 0)
    drv.setup(8)
    req = drv.request(spec.VIRTIO_BLK_T_IN, 1, read_len=512)
    drv.notify()
    assert drv.take_used() == [(req.head, 513)]
    assert drv.read_buf(req.data) == bytes(dev.disk[512:1024])
    assert dev.guest.read(spec.MMIO_STATUS) & spec.STATUS_DEVICE_NEEDS_RESET == 0
    assert len(dev.faults) == 3


def test_hardware_reset_clears_the_fault_registers_but_keeps_grants():
    dev, drv = make(handle_mode=True, entries=ENTRIES)
    dev.hv.write(spec.HV_DOMID, 9)
    drv.notify()
    assert dev.fault_count == 1
    dev.reset()
    assert hv_fault(dev) == (0, 0, 0, 0)
    assert dev.grants[drv.avail.refs[0]] == GrantEntry.permit(drv.domid, drv.avail.frames[0])
    assert not dev.irq and not dev.halted and not dev.handle_mode
