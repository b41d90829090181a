"""One simulator process of ``make bench``'s issue 17 rows, in one mode (GPA or handle), on the
deterministic memory (``tb/detmem.py``, fixed latency, no backpressure).

**Segment rows** (``segments``): a ``size``-byte request (64 KiB) as page-sized data
descriptors (16), laid out by ``sw/driver.py`` in a direct chain (header, 16 data descriptors,
status: 18 ring descriptors) or through an indirect table (one ring descriptor naming an
18-entry table the driver allocated and mapped device-readable, like a data buffer: a
read-only grant in handle mode). The driver negotiated every feature it implements but
EVENT_IDX (its ``used_event`` writes depend on when the driver sleeps, so guest memory would
differ from the reference's for a reason that is not the device's), the same in both rows, so
only the layout differs between the two. ``count`` requests per
row, ``in_flight`` per notify; cycles per request are from the notify to the last used-index
write response, summed over the row's notifies and divided by its requests. Each batch also
runs on the reference model (:class:`models.device.ReferenceDevice`): completions are compared
request by request, and every bus transaction and all of guest memory at the end (the
functional scoreboard; not cycle-checked against ``models.timing``).

**Interrupt rows** (``interrupts``): ``requests`` reads of ``size`` bytes at sequential sectors,
kept ``in_flight`` deep as a block layer keeps a queue full: the driver submits ``in_flight``
and notifies; then, each time it wakes (:meth:`sw.driver.VirtioBlkDriver.wait_any`: it waits for
an interrupt, reads and acknowledges InterruptStatus, and reaps every completion the used ring
holds), it submits as many new requests as completed and calls ``notify`` once (Linux
``virtqueue_kick``: with EVENT_IDX, a notify only if ``avail_event`` asks for one). The same
workload runs once per variant: ``no_event_idx`` (every feature but EVENT_IDX negotiated),
``enable_cb`` and ``delayed`` (every feature; before it sleeps the driver writes ``used_event
= last_used_idx``, Linux ``virtqueue_enable_cb`` as ``virtblk_done`` calls it, or ``used_event
= last_used_idx + 3/4 of the requests outstanding``, ``virtqueue_enable_cb_delayed``). Each
variant brings the driver up again (a device reset). Kicks are the notifies written,
interrupts the wakes that found InterruptStatus bit 0 set; ``irq_rises`` counts the rises of
``irq`` the monitor saw. Completions are checked against :class:`sw.workload.ExpectedDisk`
(the interleaving of completions and new requests depends on the device's speed, so the
reference model's transactions cannot be compared here); isolation is checked on every
address handshake.

Parameters (:func:`tb.runner.params`): ``handle_mode``, ``latency``, ``features`` (what the
segment rows negotiate: ``"all"``, or a list of bit numbers: plumbing runs on a build without
them), ``segments`` ``{"rows": [{"op", "size", "layout", "in_flight"}], "count"}``,
``interrupts`` ``{"requests", "in_flight", "size", "variants"}`` (optional), ``out`` (JSON
lines appended: one per row).
"""

from __future__ import annotations

import json

import cocotb

from models import spec
from sw.driver import ALL_FEATURES, BlkRequest, BlkResult, DeviceFault
from sw.workload import ExpectedDisk, page_segments_request

from .runner import params
from .scenario import Pair, Scenario, timed_batch, used_index_writes

# variant: (EVENT_IDX negotiated, used_event policy); the rest of the features are the process's
VARIANTS = {"no_event_idx": (False, "enable_cb"), "enable_cb": (True, "enable_cb"),
            "delayed": (True, "delayed")}


def _features(value) -> set[int]:
    """The process's feature set: ``"all"`` (:data:`sw.driver.ALL_FEATURES`) or bit numbers."""
    return set(ALL_FEATURES) if value == "all" else set(value)


def segment_requests(row: dict, count: int, capacity: int) -> list[list[BlkRequest]]:
    size, sectors = row["size"], row["size"] // spec.SECTOR_SIZE
    indirect = row["layout"] == "indirect"
    reqs = []
    for i in range(count):
        sector = (i * sectors) % (capacity - sectors + 1)
        data = bytes((sector + j) & 0xFF for j in range(size)) if row["op"] == "write" else None
        reqs.append(page_segments_request(row["op"], sector, size, indirect=indirect, data=data))
    n = row["in_flight"]
    return [reqs[i:i + n] for i in range(0, len(reqs), n)]


async def measure_segments(pair: Pair, ref_s, rtl_s, row: dict, count: int,
                           exp: ExpectedDisk) -> dict:
    capacity = pair.cfg.disk_bytes // spec.SECTOR_SIZE
    cycles = nreq = 0
    for batch in segment_requests(row, count, capacity):
        assert all(rtl_s.driver.uses_indirect(r) == (row["layout"] == "indirect")
                   for r in batch)
        # settle: the closing poll (and avail_event write), then idle
        rtl_res, c = await timed_batch(pair, ref_s, rtl_s, batch, settle=60, what=f"row {row}")
        check_expected(exp, batch, rtl_res)
        cycles += c
        nreq += len(batch)
    return {"cycles": cycles, "requests": nreq}


def check_expected(exp: ExpectedDisk, reqs: list[BlkRequest], results: list[BlkResult]) -> None:
    for q, r in zip(reqs, results, strict=True):
        e = exp.expect(q)
        assert (r.status, r.used_len) == (e.status, e.used_len), (q.type, q.sector, r, e)
        if e.data is not None:
            assert r.data is not None and r.data[: len(e.data)] == e.data, \
                f"data of the request at sector {q.sector}"


async def measure_interrupts(pair: Pair, sess, p: dict, variant: str,
                             exp: ExpectedDisk) -> dict:
    """The variant's run of the interrupt workload (see the module docstring)."""
    event, policy = VARIANTS[variant]
    feats = _features(p.get("features", "all")) - {spec.VIRTIO_RING_F_EVENT_IDX}
    drv = sess.driver
    drv.event_policy = policy
    await drv.init(features=feats | ({spec.VIRTIO_RING_F_EVENT_IDX} if event else set()))
    event_idx = drv.negotiated(spec.VIRTIO_RING_F_EVENT_IDX)
    assert event_idx == (variant != "no_event_idx"), drv.features
    mon = pair.tb.monitor
    size, n_in, total = p["size"], p["in_flight"], p["requests"]
    sectors = size // spec.SECTOR_SIZE
    capacity = pair.cfg.disk_bytes // spec.SECTOR_SIZE
    reqs = [BlkRequest(spec.VIRTIO_BLK_T_IN, (i * sectors) % (capacity - sectors + 1),
                       length=size) for i in range(total)]
    n_rec, n_notify, n_irq = len(mon.records), len(mon.notify_cycles), len(mon.irq_rise_cycles)
    k0, i0, s0 = drv.kicks, drv.interrupts, drv.kicks_suppressed
    by_token: dict[int, BlkRequest] = {}
    nxt = 0

    async def submit(n: int) -> None:
        nonlocal nxt
        for _ in range(n):
            if nxt == total:
                break
            by_token[await drv.submit(reqs[nxt])] = reqs[nxt]
            nxt += 1
        await drv.notify()

    await submit(n_in)
    done = 0
    wakes = 0
    while done < total:
        try:
            got = await drv.wait_any()
        except DeviceFault as exc:
            f = await sess.hv.fault()
            ref = spec.split_handle(f.addr)[0] if f.addr >> 63 else None
            entry = (await sess.hv.hv.read32(spec.HV_GRANT_BASE + 8 * ref),
                     await sess.hv.hv.read32(spec.HV_GRANT_BASE + 8 * ref + 4)) if ref else None
            live = {hex(h) for h in getattr(sess.dma, "mappings", {})}
            raise AssertionError(f"{variant}: {exc}; {f}; entry {entry}; live {sorted(live)[:8]}"
                                 f" rings {drv.desc_addr:#x} {drv.avail_addr:#x} "
                                 f"{drv.used_addr:#x}; used_idx "
                                 f"{drv.used_idx()}, last_used {drv.last_used}, avail_idx "
                                 f"{drv.avail_idx}, used_event {drv.used_event()}, "
                                 f"avail_event {drv.avail_event()}") from exc
        wakes += 1
        check_expected(exp, [by_token.pop(r.token) for r in got], got)
        done += len(got)
        if nxt < total:
            await submit(len(got))
    await pair.tb.wait_cycles(60)
    notify = mon.notify_cycles[n_notify]
    last = used_index_writes(pair, n_rec, drv)[-1]
    return {"requests": total, "in_flight": n_in, "size": size,
            "kicks": drv.kicks - k0, "kicks_suppressed": drv.kicks_suppressed - s0,
            "interrupts": drv.interrupts - i0, "wakes": wakes,
            "irq_rises": len(mon.irq_rise_cycles) - n_irq,
            "notifies_seen": len(mon.notify_cycles) - n_notify,
            "cycles": last - notify, "event_idx": event_idx, "policy": policy}


@cocotb.test()
async def test_features(dut):
    p = params()
    handle_mode = p["handle_mode"]
    mode = "handle" if handle_mode else "gpa"
    pair = Pair(dut, Scenario(handle_mode=handle_mode, seed=1, mem_bytes=1 << 23),
                mem_latency=p["latency"])
    ref_s, rtl_s = await pair.start()
    exp = ExpectedDisk(pair.cfg.disk_bytes, features=pair.cfg.features,
                       queue_num_max=pair.cfg.queue_num_max)
    feats = _features(p.get("features", "all")) - {spec.VIRTIO_RING_F_EVENT_IDX}
    for s in (ref_s, rtl_s):
        await s.driver.init(features=feats)
    common = {"mode": mode, "mem_latency": p["latency"], "data_width": pair.cfg.data_width}
    seg = p.get("segments")
    if seg:
        for row in seg["rows"]:
            m = await measure_segments(pair, ref_s, rtl_s, row, seg["count"], exp)
            with open(p["out"], "a") as f:
                f.write(json.dumps({"kind": "segments", **row, **m, **common}) + "\n")
        pair.check(" (features bench, segment rows)")
    irq = p.get("interrupts")
    if irq:
        for variant in irq["variants"]:
            m = await measure_interrupts(pair, rtl_s, {**irq, "features": p.get("features",
                                                                              "all")},
                                         variant, exp)
            with open(p["out"], "a") as f:
                f.write(json.dumps({"kind": "interrupts", "variant": variant, **m, **common})
                        + "\n")
        iso = pair.tb.isolation
        assert not iso.violations, iso.violations[:5]
        iso.require_all_checked(len(pair.tb.monitor.records), per_page=False)
