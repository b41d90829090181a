"""System benches: the guest driver model drives the RTL and, separately, the reference model;
the scoreboard compares bus transactions, completions, guest memory and the RAM disk.

Each cocotb test runs in its own simulator process (``tests/test_sim.py`` selects one with
``testcase=``), so the RAM disk starts from its initial image every time. Knobs
(:func:`tb.runner.params`): ``handle_mode``, ``seed``, ``requests``, ``timing`` (seed of
random memory latency and backpressure, or null).
"""

from __future__ import annotations

import random

import cocotb

from models import spec
from sw.compare import compare_bytes, read_disk
from sw.driver import BlkRequest
from sw.workload import random_requests

from .runner import params
from .scenario import Pair, Scenario, run_on_both


@cocotb.test()
async def test_basic(dut):
    """Read, write, flush and get-id, single and multi-page, then the whole disk read back."""
    p = params()
    pair = Pair(dut, Scenario(handle_mode=p.get("handle_mode", True), seed=p.get("seed", 1)))
    ref_s, rtl_s = await pair.start(p.get("timing"))
    rng = random.Random(5)
    data1 = rng.randbytes(4096)
    data2 = rng.randbytes(3 * 4096 + 512)
    reqs = [
        BlkRequest(spec.VIRTIO_BLK_T_GET_ID, length=spec.VIRTIO_BLK_ID_BYTES),
        BlkRequest(spec.VIRTIO_BLK_T_IN, 3, length=512),
        BlkRequest(spec.VIRTIO_BLK_T_OUT, 8, data=data1),
        BlkRequest(spec.VIRTIO_BLK_T_IN, 8, length=4096),
        BlkRequest(spec.VIRTIO_BLK_T_OUT, 20, data=data2, offsets=[100]),
        BlkRequest(spec.VIRTIO_BLK_T_IN, 20, length=len(data2), offsets=[4000]),
        BlkRequest(spec.VIRTIO_BLK_T_FLUSH),
    ]
    _ref_res, rtl_res = await run_on_both(pair, ref_s, rtl_s, reqs)
    assert rtl_res[0].data == spec.DEVICE_SERIAL
    assert rtl_res[3].data == data1
    assert rtl_res[5].data == data2
    pair.check(" after basic requests")
    ref_disk = await read_disk(ref_s.driver.run_batch, ref_s.driver.capacity)
    rtl_disk = await read_disk(rtl_s.driver.run_batch, rtl_s.driver.capacity)
    compare_bytes("RAM disk read back", bytes(pair.ref.disk), rtl_disk)
    compare_bytes("reference read-back", bytes(pair.ref.disk), ref_disk)
    pair.check(" after disk read-back")


@cocotb.test()
async def test_random(dut):
    """Seeded random requests (sizes, layouts, alignments, IOERR/UNSUPP cases) in batches."""
    p = params()
    seed = p.get("seed", 1)
    pair = Pair(dut, Scenario(handle_mode=p.get("handle_mode", True), seed=seed,
                              queue_size=p.get("queue_size")))
    ref_s, rtl_s = await pair.start(p.get("timing"))
    reqs = random_requests(seed, p.get("requests", 100), pair.cfg.disk_bytes // 512,
                           max_segments=p.get("max_segments", 4))
    batch = p.get("batch", 16)
    for i in range(0, len(reqs), batch):
        await run_on_both(pair, ref_s, rtl_s, reqs[i:i + batch])
    pair.check(f" after {len(reqs)} random requests")
    rtl_disk = await read_disk(rtl_s.driver.run_batch, rtl_s.driver.capacity)
    await read_disk(ref_s.driver.run_batch, ref_s.driver.capacity)
    compare_bytes("RAM disk read back", bytes(pair.ref.disk), rtl_disk)
    pair.check(" after disk read-back")


@cocotb.test()
async def test_index_wrap(dut):
    """16-bit index wrap-around: both devices and the driver start their ring indices just
    below 2**16 (back door into the engine's registers), then requests run across the wrap."""
    p = params()
    start = 0x10000 - p.get("before", 24)
    pair = Pair(dut, Scenario(handle_mode=p.get("handle_mode", True), seed=p.get("seed", 1),
                              queue_size=p.get("queue_size", 8)))
    ref_s, rtl_s = await pair.start(p.get("timing"))
    for sess in (ref_s, rtl_s):
        drv = sess.driver
        drv.set_avail_idx(start)
        drv.last_used = start
        drv.used_buf.write(2, start.to_bytes(2, "little"))
    pair.ref.last_avail_idx = pair.ref.used_idx = start
    dut.engine.last_avail.value = start
    dut.engine.used_idx.value = start
    await pair.tb.wait_cycles(2)
    assert int(dut.engine.last_avail.value) == start
    reqs = random_requests(p.get("seed", 1), p.get("requests", 48), pair.cfg.disk_bytes // 512,
                           errors=False)
    for i in range(0, len(reqs), 6):
        await run_on_both(pair, ref_s, rtl_s, reqs[i:i + 6])
    assert rtl_s.driver.avail_idx < start, "the run did not cross the 16-bit wrap"
    pair.check(f" across the 16-bit index wrap (from {start})")
