"""``make simspeed``'s workload is ``make demo``'s, whose memory is
:class:`tb.detmem.PipelinedMemory`: cocotbext-axi's ``AxiSlave`` timing without its cost
(docs/simulation.md, "Speed"). This checks that claim on the demo's own workload.

The demo bench (``tb.demo_bench:test_demo``, its checks against the reference model included)
runs twice on one simulator, with ``AxiSlave`` and with ``PipelinedMemory``, through
``tests.test_simulators``' recorder: every ``m_axi`` transaction (address, beats, the cycle of
its address handshake, the strobed bytes, the response and the cycle of a write's response),
every handshake on ``s_axil`` and ``s_hv`` with its value and cycle, the QueueNotify and
``irq`` cycles, the last cycle and the simulated time must be equal, entry for entry, and so
must the demo's summary (cycles, latencies, transactions, translations). The cycles of the
individual read and write data beats are not recorded; a beat on another cycle would move
the later handshakes.
"""

from __future__ import annotations

import json

import pytest

from tb.runner import ROOT, DeviceConfig, check_simulator, run
from tests.test_simulators import _first_difference

pytestmark = pytest.mark.sim


def _sim() -> str:
    """Verilator where it can run (faster), else Icarus."""
    try:
        check_simulator("verilator")
        return "verilator"
    except RuntimeError:
        return "icarus"


@pytest.mark.parametrize("handle_mode", [True, False], ids=["handle", "gpa"])
def test_pipelined_memory_is_axislave(handle_mode):
    sim = _sim()
    out = {}
    for memory in ("axislave", "pipelined"):
        name = f"memory-{'handle' if handle_mode else 'gpa'}-{memory}-{sim}"
        rec = ROOT / "build" / "simspeed" / f"{name}.json"
        summary = rec.with_name(f"{name}-summary.json")
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.unlink(missing_ok=True)
        summary.unlink(missing_ok=True)
        params = {"_bench": "tb.demo_bench:test_demo", "_record": str(rec),
                  "handle_mode": handle_mode, "requests": 16, "seed": 5, "memory": memory,
                  "summary": str(summary)}
        tests, failed, _ = run("tests.test_simulators", DeviceConfig(), testcase="record",
                               params=params, results_name=name, sim=sim,
                               log=rec.with_suffix(".log"))
        assert tests == 1 and failed == 0, f"the demo with {memory} failed on {sim} " \
            f"(log {rec.with_suffix('.log')})"
        s = json.loads(summary.read_text())
        for k in ("wall_s", "cpu_s"):
            s.pop(k)
        out[memory] = {"record": json.loads(rec.read_text()), "summary": s}
    a, p = out["axislave"], out["pipelined"]
    assert a["summary"]["matches_reference"] and a["record"]["monitors"][0]["bus"]
    diff = _first_difference(a, p)
    assert diff is None, f"AxiSlave ('Icarus' below) and PipelinedMemory differ at {diff}"
