"""System benches: the guest driver model drives the RTL and, separately, the reference model;
the scoreboard compares bus transactions, completions, guest memory and the RAM disk.

Each cocotb test runs in its own simulator process (``tests/test_sim.py`` selects one with
``testcase=``), so the RAM disk starts from its initial image every time. Knobs come from the
environment variable ``VHB_PARAMS`` (JSON): ``handle_mode``, ``seed``, ``requests``,
``timing`` (seed of random memory latency and backpressure, or null).
"""

from __future__ import annotations

import json
import os
import random

import cocotb

from models import spec
from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.driver import BlkRequest
from sw.workload import random_requests

from .bench import DeviceBench
from .runner import DeviceConfig
from .scenario import Scenario, bring_up, read_whole_disk
from .scoreboard import compare_bytes, compare_results, compare_transactions


def params() -> dict:
    return json.loads(os.environ.get("VHB_PARAMS", "{}"))


class Pair:
    """The RTL bench and a reference device with the same configuration and memory size."""

    def __init__(self, dut, sc: Scenario, mem_latency: int | None = None,
                 ref_cls=ReferenceDevice):
        self.cfg = DeviceConfig.from_env()
        self.sc = sc
        self.tb = DeviceBench(dut, mem_bytes=sc.mem_bytes, data_width=self.cfg.data_width,
                              mem_latency=mem_latency)
        self.ref = ref_cls(GuestMemory(sc.mem_bytes), entries=self.cfg.entries,
                                   queue_num_max=self.cfg.queue_num_max,
                                   disk_bytes=self.cfg.disk_bytes,
                                   data_width=self.cfg.data_width, bus_error=self.tb.errors)
        self.log = self.tb.log

    async def start(self, timing: int | None = None):
        await self.tb.reset()
        self.tb.set_memory_timing(timing)
        return await bring_up(self.ref, self.sc), await bring_up(self.tb, self.sc)

    def check(self, what: str = "") -> None:
        iso = self.tb.isolation
        if iso.violations:
            raise AssertionError(f"isolation violated ({len(iso.violations)} transaction(s)): "
                                 + "; ".join(iso.violations[:5]))
        compare_transactions(self.ref.transactions, self.tb.monitor.records,
                             self.cfg.data_width)
        compare_bytes(f"guest memory{what}", self.ref.mem.snapshot(), self.tb.mem.snapshot())
        self.log.info("scoreboard%s: %d bus transactions and all of guest memory match; "
                      "isolation held on %d address handshakes", what,
                      len(self.ref.transactions), iso.checked)


async def run_on_both(pair: Pair, ref_sess, rtl_sess, reqs: list[BlkRequest]):
    ref_res = await ref_sess.driver.run_batch(reqs)
    rtl_res = await rtl_sess.driver.run_batch(reqs)
    compare_results(ref_res, rtl_res)
    return ref_res, rtl_res


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
    ref_disk = await read_whole_disk(ref_s.driver)
    rtl_disk = await read_whole_disk(rtl_s.driver)
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
    rtl_disk = await read_whole_disk(rtl_s.driver)
    await read_whole_disk(ref_s.driver)
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
