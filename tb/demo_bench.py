"""The default workload of ``make demo``: the guest driver runs a mixed virtio-blk workload on
the RTL in the chosen mode, the same workload runs on the reference model, and the scoreboard
compares them. Then single requests of 512 B, 4 KiB and 64 KiB measure the device's latency.

Parameters (:func:`tb.runner.params`): ``handle_mode``, ``requests``, ``seed``, ``summary``,
the file the summary is written to as JSON, and ``memory``: ``pipelined`` (the default,
:class:`tb.detmem.PipelinedMemory`) or ``axislave`` (cocotbext-axi's ``AxiSlave``, the same
timing; the demo takes about 1.4 times the CPU time with it on Verilator;
``tests/test_simspeed.py`` compares the two).
"""

from __future__ import annotations

import json
import time

import cocotb

from models import spec
from sw.driver import BlkRequest
from sw.workload import random_requests

from .bench import DeviceBench
from .runner import params
from .scenario import Pair, Scenario, run_on_both

SIZES = (512, 4096, 65536)


@cocotb.test()
async def test_demo(dut):
    p = params()
    wall0, cpu0 = time.perf_counter(), time.process_time()  # for make simspeed
    handle_mode = p.get("handle_mode", True)
    seed = p.get("seed", 1)
    # AxiSlave's timing at a fraction of its cost, unless the bench is asked for AxiSlave
    DeviceBench.pipelined_memory = p.get("memory", "pipelined") == "pipelined"
    pair = Pair(dut, Scenario(handle_mode=handle_mode, seed=seed))
    ref_s, rtl_s = await pair.start()
    mon = pair.tb.monitor
    summary = {"mode": "handle" if handle_mode else "gpa", "data_width": pair.cfg.data_width,
               "entries": pair.cfg.entries, "disk_bytes": pair.cfg.disk_bytes, "seed": seed}
    matches = True
    try:
        # 1. mixed workload in batches of 8
        reqs = random_requests(seed, p.get("requests", 64), pair.cfg.disk_bytes // 512)
        start = pair.tb.cycle
        results = []
        for i in range(0, len(reqs), 8):
            _, rtl_res = await run_on_both(pair, ref_s, rtl_s, reqs[i:i + 8])
            results += rtl_res
        summary["workload_cycles"] = pair.tb.cycle - start
        summary["requests"] = len(results)
        summary["statuses"] = {name: sum(r.status == code for r in results) for name, code in
                               (("ok", 0), ("ioerr", 1), ("unsupp", 2))}
        summary["bytes_moved"] = sum(r.request.data_len for r in results if r.ok and r.request.type
                                     in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT))
        # 2. single-request latency: QueueNotify accepted -> irq raised
        lat = {}
        for size in SIZES:
            for kind, req in (("read", BlkRequest(spec.VIRTIO_BLK_T_IN, 0, length=size)),
                              ("write", BlkRequest(spec.VIRTIO_BLK_T_OUT, 0,
                                                   data=bytes(range(256)) * (size // 256)))):
                n0, i0 = len(mon.notify_cycles), len(mon.irq_rise_cycles)
                await run_on_both(pair, ref_s, rtl_s, [req])
                assert len(mon.notify_cycles) == n0 + 1 and len(mon.irq_rise_cycles) == i0 + 1
                lat[f"{kind}_{size}"] = mon.irq_rise_cycles[-1] - mon.notify_cycles[-1]
        summary["latency_cycles"] = lat
        pair.check(" (demo)")
    except AssertionError as exc:
        matches = False
        summary["mismatch"] = str(exc)
    summary["matches_reference"] = matches
    summary["bus_transactions"] = len(mon.records)
    summary["translations"] = await rtl_s.hv.hv.read32(spec.HV_STAT_XLATE)
    summary["reference_translations"] = pair.ref.translations
    summary["completed"] = await rtl_s.hv.hv.read32(spec.HV_STAT_REQUESTS)
    summary["faults"] = (await rtl_s.hv.fault()).count
    summary["total_cycles"] = pair.tb.cycle
    # this process's time from the bench's start (the simulator's and Python's, the reference
    # model's included; not the build or the process's start-up)
    summary["wall_s"] = time.perf_counter() - wall0
    summary["cpu_s"] = time.process_time() - cpu0
    with open(p["summary"], "w") as f:
        json.dump(summary, f, indent=2)
    assert matches, summary.get("mismatch")
