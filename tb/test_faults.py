"""Every fault cause on the RTL, against the reference: the same fault registers, the same
bus transactions up to the fault (none to the offending address), isolation on every
handshake, and recovery after a driver reset.

The cocotb test ``test_fault`` reads the case name from its parameters (``{"case": ...}``).
"""

from __future__ import annotations

import cocotb

from models import spec
from sw.driver import BlkRequest, DeviceFault

from .runner import params
from .scenario import Pair, Scenario, Session, run_on_both


def _token_descs(sess: Session, token: int) -> list[int]:
    return sess.driver._inflight[token].descs  # the chain the driver built for this request


async def _data_desc(sess: Session, token: int) -> tuple[int, tuple[int, int, int, int]]:
    i = _token_descs(sess, token)[1]
    return i, sess.driver.read_desc(i)


async def not_a_handle(sess, token):
    i, (addr, ln, fl, nx) = await _data_desc(sess, token)
    sess.driver.write_desc(i, addr & ~spec.HANDLE_BIT, ln, fl, nx)


async def ref_outside(sess, token):
    i, (addr, ln, fl, nx) = await _data_desc(sess, token)
    sess.driver.write_desc(i, spec.make_handle(await sess.hv.entries() + 3, addr & 0xFFF), ln,
                           fl, nx)


async def not_permitted(sess, token):
    _, (addr, *_) = await _data_desc(sess, token)
    await sess.hv.revoke(spec.split_handle(addr)[0])


async def wrong_domain(sess, token):
    _, (addr, *_) = await _data_desc(sess, token)
    ref = spec.split_handle(addr)[0]
    flags, domid, frame = await sess.hv.read_entry(ref)
    await sess.hv.write_entry(ref, flags, domid ^ 0x55, frame)


async def read_only(sess, token):  # the request is a read: the device writes the data buffer
    _, (addr, *_) = await _data_desc(sess, token)
    ref = spec.split_handle(addr)[0]
    flags, domid, frame = await sess.hv.read_entry(ref)
    await sess.hv.write_entry(ref, flags | spec.GTF_readonly, domid, frame)


async def second_page_ungranted(sess, token):  # buffer runs into an ungranted next reference
    _, (addr, *_) = await _data_desc(sess, token)
    await sess.hv.revoke(spec.split_handle(addr)[0] + 1)


async def chain_loop(sess, token):
    descs = _token_descs(sess, token)
    i = descs[1]
    addr, ln, fl, _ = sess.driver.read_desc(i)
    sess.driver.write_desc(i, addr, ln, fl | spec.VIRTQ_DESC_F_NEXT, descs[0])


async def index_outside(sess, token):
    descs = _token_descs(sess, token)
    addr, ln, fl, _ = sess.driver.read_desc(descs[0])
    sess.driver.write_desc(descs[0], addr, ln, fl, sess.driver.queue_size + 5)


async def avail_jump(sess, token):
    sess.driver.set_avail_idx(sess.driver.avail_idx + sess.driver.queue_size)


async def status_readable(sess, token):  # flush: header and status both device-readable
    descs = _token_descs(sess, token)
    addr, ln, fl, nx = sess.driver.read_desc(descs[-1])
    sess.driver.write_desc(descs[-1], addr, ln, fl & ~spec.VIRTQ_DESC_F_WRITE, nx)


async def header_writable(sess, token):  # flush: header and status both device-writable
    descs = _token_descs(sess, token)
    addr, ln, fl, nx = sess.driver.read_desc(descs[0])
    sess.driver.write_desc(descs[0], addr, ln, fl | spec.VIRTQ_DESC_F_WRITE, nx)


async def readable_after_writable(sess, token):
    descs = _token_descs(sess, token)
    addr, ln, fl, nx = sess.driver.read_desc(descs[0])
    sess.driver.write_desc(descs[0], addr, ln, fl | spec.VIRTQ_DESC_F_WRITE, nx)


def bus_error(kind: str, what: str):
    async def mutate(sess, token):
        errors = getattr(sess.link, "errors", None) or sess.link.bus_error  # one shared object
        descs = _token_descs(sess, token)
        if what == "desc":
            addr = sess.driver.desc_buf.phys(16 * descs[0])
        elif what == "used":
            addr = sess.driver.used_buf.phys(0)
        else:
            addr = sess.driver._inflight[token].pieces[1].buf.phys(0)
        errors.add(kind, addr)
    return mutate


CASES = {
    # name: (request, mutation, expected cause, handle mode only)
    "not_a_handle": ("read", not_a_handle, spec.FAULT_NOT_HANDLE, True),
    "ref_outside": ("read", ref_outside, spec.FAULT_REF_RANGE, True),
    "not_permitted": ("write", not_permitted, spec.FAULT_NOT_PERMITTED, True),
    "wrong_domain": ("write", wrong_domain, spec.FAULT_WRONG_DOMAIN, True),
    "read_only": ("read", read_only, spec.FAULT_READONLY, True),
    "second_page_ungranted": ("read2", second_page_ungranted, spec.FAULT_NOT_PERMITTED, True),
    "bus_error_desc": ("read", bus_error("R", "desc"), spec.FAULT_BUS_ERROR, False),
    "bus_error_data_read": ("write", bus_error("R", "data"), spec.FAULT_BUS_ERROR, False),
    "bus_error_data_write": ("read", bus_error("W", "data"), spec.FAULT_BUS_ERROR, False),
    "bus_error_used": ("read", bus_error("W", "used"), spec.FAULT_BUS_ERROR, False),
    "chain_loop": ("read", chain_loop, spec.FAULT_BAD_CHAIN, False),
    "index_outside": ("read", index_outside, spec.FAULT_BAD_CHAIN, False),
    "readable_after_writable": ("write", readable_after_writable, spec.FAULT_BAD_CHAIN, False),
    "avail_jump": ("read", avail_jump, spec.FAULT_BAD_RING, False),
    "status_readable": ("flush", status_readable, spec.FAULT_BAD_REQUEST, False),
    "header_writable": ("flush", header_writable, spec.FAULT_BAD_REQUEST, False),
}


def _request(kind: str) -> BlkRequest:
    if kind == "read":
        return BlkRequest(spec.VIRTIO_BLK_T_IN, 2, length=1024)
    if kind == "flush":
        return BlkRequest(spec.VIRTIO_BLK_T_FLUSH)
    if kind == "read2":  # two pages: the second page's grant is revoked
        return BlkRequest(spec.VIRTIO_BLK_T_IN, 0, length=8192, offsets=[512])
    return BlkRequest(spec.VIRTIO_BLK_T_OUT, 4, data=bytes(range(256)) * 8)


@cocotb.test()
async def test_fault(dut):
    p = params()
    name = p["case"]
    kind, mutate, cause, handle_only = CASES[name]
    handle_mode = p.get("handle_mode", True) or handle_only
    pair = Pair(dut, Scenario(handle_mode=handle_mode, seed=p.get("seed", 2)))
    ref_s, rtl_s = await pair.start(p.get("timing"))

    # A good request first, so the fault happens with history behind it.
    await run_on_both(pair, ref_s, rtl_s, [BlkRequest(spec.VIRTIO_BLK_T_IN, 1, length=512)])
    faults = []
    for sess in (ref_s, rtl_s):
        token = await sess.driver.submit(_request(kind))
        await mutate(sess, token)
        await sess.driver.kick()
        try:
            await sess.driver.wait([token])
        except DeviceFault:
            pass
        else:
            raise AssertionError(f"{name}: the request completed instead of faulting")
        faults.append(await sess.hv.fault())
        assert await sess.driver.device_status() & spec.STATUS_DEVICE_NEEDS_RESET
    ref_f, rtl_f = faults
    pair.log.info("%s: reference %s; RTL %s", name, ref_f, rtl_f)
    assert ref_f.cause == cause, f"{name}: reference gives cause {ref_f.cause}, case wants {cause}"
    assert (rtl_f.latched, rtl_f.cause, rtl_f.addr, rtl_f.count) == \
        (ref_f.latched, ref_f.cause, ref_f.addr, ref_f.count), \
        f"{name}: fault registers differ: reference {ref_f}, RTL {rtl_f}"
    pair.check(f" at fault {name}")
    if cause not in (spec.FAULT_BUS_ERROR, spec.FAULT_BAD_CHAIN, spec.FAULT_BAD_RING,
                     spec.FAULT_BAD_REQUEST):
        # the offending address never reached the bus
        bad_page = ref_f.addr >> spec.PAGE_SHIFT
        for r in rtl_s.link.monitor.records:
            assert r.addr >> spec.PAGE_SHIFT != bad_page or not handle_mode, \
                f"{name}: transaction {r} reached the faulting page"

    # Recovery: driver reset, re-initialisation, good requests.
    rtl_s.link.errors.clear()
    for sess in (ref_s, rtl_s):
        await sess.driver.reset()
        await sess.hv.clear_fault()
        await sess.driver.init()
    reqs = [BlkRequest(spec.VIRTIO_BLK_T_OUT, 6, data=bytes([0xA5]) * 1024),
            BlkRequest(spec.VIRTIO_BLK_T_IN, 6, length=1024),
            BlkRequest(spec.VIRTIO_BLK_T_GET_ID, length=20)]
    _, rtl_res = await run_on_both(pair, ref_s, rtl_s, reqs)
    assert [r.status for r in rtl_res] == [0, 0, 0]
    assert rtl_res[1].data == bytes([0xA5]) * 1024
    pair.check(f" after recovery from {name}")
