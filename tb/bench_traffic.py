"""One simulator process of ``make bench``'s traffic rows: requests shaped like real traffic on
a memory with random timing (``tb/randmem.py``), in one mode.

Every row runs once per memory seed (``seeds``); the memory's random stream is seeded again
just before each notify (from the seed and the notify's index in the row), so that both modes'
processes see the same stream from the notify on, and a difference between them is the
device's: each ready of ``m_axi`` low with probability ``stall`` in every cycle, read data and
write responses ``2 + x`` cycles after the address (the last data beat), ``x`` random in
``0 .. max_latency``.
A row is ``{"op": "read"|"write", "size", "descs", "in_flight"}``: ``count`` requests (IN
for reads: the device writes guest memory; OUT for writes: it reads it) of ``size`` bytes at
sequential sectors, each a chain of ``descs`` descriptors (the header, ``descs - 2`` data
descriptors of near-equal length, the status byte, laid out by ``sw/driver.py``),
``in_flight`` per notify. Cycles per request are from the notify to the last used-index write
response, summed over the row's notifies and divided by its requests, per seed. Both modes'
processes use the same seeds, rows and requests; the functional scoreboard checks every
transaction and all of guest memory at the end.

Parameters (:func:`tb.runner.params`): ``handle_mode``, ``rows``, ``seeds``, ``stall``,
``max_latency``, ``count``, ``out`` (JSON lines appended: one per row and seed).
"""

from __future__ import annotations

import functools
import json

import cocotb

from models import spec
from models.timing import TimedDevice
from sw.driver import BlkRequest

from .randmem import install
from .runner import params
from .scenario import Pair, Scenario, timed_batch


def segments(size: int, n: int) -> list[int]:
    """``size`` bytes in ``n`` near-equal descriptors."""
    base = size // n
    return [base] * (n - 1) + [size - base * (n - 1)]


def requests_for(row: dict, count: int, capacity: int) -> list[list[BlkRequest]]:
    size, n_data = row["size"], row["descs"] - 2
    sectors = size // spec.SECTOR_SIZE
    reqs = []
    for i in range(count):
        sector = (i * sectors) % (capacity - sectors + 1)
        segs = segments(size, n_data)
        if row["op"] == "write":
            data = bytes((sector + j) & 0xFF for j in range(size))
            reqs.append(BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=data, segments=segs))
        else:
            reqs.append(BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=size, segments=segs))
    n = row["in_flight"]
    return [reqs[i:i + n] for i in range(0, len(reqs), n)]


@cocotb.test()
async def test_traffic(dut):
    p = params()
    handle_mode = p["handle_mode"]
    pair = Pair(dut, Scenario(handle_mode=handle_mode, seed=1, mem_bytes=1 << 23),
                mem_latency=0, ref_cls=TimedDevice)
    mem = install(pair.tb, seed=0, stall=p["stall"], max_latency=p["max_latency"])
    ref_s, rtl_s = await pair.start()
    capacity = pair.cfg.disk_bytes // spec.SECTOR_SIZE
    for row in p["rows"]:
        count = max(p["count"], row["in_flight"])
        for seed in p["seeds"]:
            cycles = nreq = 0
            for k, batch in enumerate(requests_for(row, count, capacity)):
                # the same random stream in both modes, from the notify on
                _, c = await timed_batch(
                    pair, ref_s, rtl_s, batch, settle=2 * p["max_latency"] + 60,
                    before_kick=functools.partial(mem.set_timing, seed * 1000 + k, p["stall"],
                                                  p["max_latency"]),
                    what=f"row {row}")
                cycles += c
                nreq += len(batch)
            rec = {"kind": "traffic", **row, "seed": seed, "cycles": cycles, "requests": nreq,
                   "mode": "handle" if handle_mode else "gpa", "stall": p["stall"],
                   "max_latency": p["max_latency"], "data_width": pair.cfg.data_width}
            with open(p["out"], "a") as f:
                f.write(json.dumps(rec) + "\n")
    pair.check(" (traffic bench)")
