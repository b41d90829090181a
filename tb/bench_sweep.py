"""One simulator process of ``make bench``: every workload row for one (mode, memory latency,
data width), measured on the RTL with the deterministic memory. Each row's requests also run on
the timed reference model, which must predict every completion's cycle exactly.

Parameters (:func:`tb.runner.params`): ``{"handle_mode", "latency", "rows": [{"size",
"pattern", "align", "in_flight"}, ...], "repeat": index of a row to run twice, "out"}``;
results are appended, one JSON object per line, to the file named by ``out``.
"""

from __future__ import annotations

import json
import random

import cocotb

from models import spec
from models.timing import TimedDevice, lower_bound, request_traces
from sw.driver import BlkRequest

from .runner import params
from .scenario import Pair, Scenario, run_on_both, used_index_writes

UNALIGNED_OFFSET = 100  # bytes into the page: unaligned to the page and to every bus width


def requests_for(row: dict, capacity: int, rng: random.Random) -> list[list[BlkRequest]]:
    """The row's requests, as batches of ``in_flight`` (each batch is one notify)."""
    size, n_in = row["size"], row["in_flight"]
    count = n_in if n_in > 1 else (8 if size <= 4096 else 2)
    sectors = size // spec.SECTOR_SIZE
    off = UNALIGNED_OFFSET if row["align"] == "unaligned" else 0
    reqs = []
    for i in range(count):
        if row["pattern"] == "seq":
            sector = (i * sectors) % (capacity - sectors + 1)
        else:
            sector = rng.randrange(capacity - sectors + 1)
        reqs.append(BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=size, offsets=[off]))
    return [reqs[i:i + n_in] for i in range(0, len(reqs), n_in)]


async def measure(pair: Pair, ref_s, rtl_s, row: dict, latency: int, seed: int) -> dict:
    mon = pair.tb.monitor
    ref: TimedDevice = pair.ref
    hv = rtl_s.hv.hv
    rng = random.Random(seed)
    batches = requests_for(row, pair.cfg.disk_bytes // spec.SECTOR_SIZE, rng)
    x0 = await hv.read32(spec.HV_STAT_XLATE)
    cycles = beats = bound = nreq = 0
    for batch in batches:
        kick = len(ref.kicks)
        n_rec, n_notify = len(mon.records), len(mon.notify_cycles)
        await run_on_both(pair, ref_s, rtl_s, batch)
        await pair.tb.wait_cycles(2 * latency + 40)  # the closing poll, then idle
        notify = mon.notify_cycles[n_notify]
        recs = mon.records[n_rec:]
        done = used_index_writes(pair, n_rec, rtl_s.driver)
        assert len(done) == len(batch)
        predicted = ref.schedule(kick, latency=latency,
                                 lookups=pair.cfg.translation).completions
        assert [c - notify for c in done] == predicted, \
            f"row {row}: completions {[c - notify for c in done]}, model {predicted}"
        cycles += done[-1] - notify
        beats += sum(r.beats for r in recs if r.cycle <= done[-1])
        for req, poll in request_traces(ref, kick):
            bound += lower_bound(req, poll, latency=latency, data_width=pair.cfg.data_width,
                                 in_flight=row["in_flight"])
        nreq += len(batch)
    x1 = await hv.read32(spec.HV_STAT_XLATE)
    return {"cycles": cycles, "requests": nreq, "data_beats": beats, "bound": bound,
            "translations": x1 - x0}


@cocotb.test()
async def test_sweep(dut):
    p = params()
    latency = p["latency"]
    handle_mode = p["handle_mode"]
    pair = Pair(dut, Scenario(handle_mode=handle_mode, seed=1, mem_bytes=1 << 23),
                mem_latency=latency, ref_cls=TimedDevice)
    ref_s, rtl_s = await pair.start()
    out = p["out"]
    results = []
    for i, row in enumerate(p["rows"]):
        m = await measure(pair, ref_s, rtl_s, row, latency, seed=i)
        results.append(m)
        rec = {**row, **m, "mode": p.get("mode", "handle" if handle_mode else "gpa"),
               "mem_latency": latency,
               "data_width": pair.cfg.data_width}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if p.get("repeat") is not None:
        i = p["repeat"]
        again = await measure(pair, ref_s, rtl_s, p["rows"][i], latency, seed=i)
        assert again["cycles"] == results[i]["cycles"], \
            f"row {p['rows'][i]} is not repeatable: {results[i]['cycles']} then " \
            f"{again['cycles']} cycles"
        with open(out, "a") as f:
            f.write(json.dumps({"repeat_check": p["rows"][i], "cycles": again["cycles"]}) + "\n")
    pair.check(" (bench)")
