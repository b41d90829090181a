"""Co-simulation of the RTL under cocotb and Icarus Verilog, started through cocotb's Python
runner. Every case compares the RTL with the reference model transaction by transaction
(``tb/scoreboard.py``) and checks the isolation invariant on every ``m_axi`` handshake.
"""

from __future__ import annotations

import pytest

from tb.runner import DeviceConfig, run
from tb.test_faults import CASES

pytestmark = pytest.mark.sim


def cosim(module: str, testcase: str, params: dict, *, data_width: int = 64,
          name: str, translation: bool = True) -> None:
    tests, failed, xml = run(module, DeviceConfig(data_width=data_width,
                                                  translation=translation),
                             testcase=testcase, params=params, results_name=name)
    assert tests == 1, f"{module}.{testcase} did not run (see {xml})"
    assert failed == 0, f"{module}.{testcase} with {params} failed; log above, results {xml}"


@pytest.mark.parametrize("width", [32, 64, 128])
def test_registers(width):
    for case in ("test_identity_and_hv_map", "test_hv_sync_idle"):
        cosim("tb.test_registers", case, {}, data_width=width, name=f"registers_{case}")


@pytest.mark.parametrize("width", [32, 64, 128])
@pytest.mark.parametrize("mode", ["handle", "gpa"])
def test_basic(width, mode):
    cosim("tb.test_system", "test_basic", {"handle_mode": mode == "handle"},
          data_width=width, name=f"basic_{mode}")


RANDOM = [
    # (id, width, params): hundreds of seeded requests, layouts and alignments
    ("w64-handle", 64, {"handle_mode": True, "seed": 11, "requests": 200}),
    ("w64-gpa-latency", 64, {"handle_mode": False, "seed": 12, "requests": 150, "timing": 5}),
    ("w64-handle-latency", 64, {"handle_mode": True, "seed": 13, "requests": 150, "timing": 6}),
    ("w32-handle-latency", 32, {"handle_mode": True, "seed": 14, "requests": 120, "timing": 7}),
    ("w128-handle-latency", 128, {"handle_mode": True, "seed": 15, "requests": 150,
                                  "timing": 8}),
    ("w128-gpa", 128, {"handle_mode": False, "seed": 16, "requests": 150}),
    ("w64-handle-queue8", 64, {"handle_mode": True, "seed": 17, "requests": 100,
                               "queue_size": 8, "batch": 3, "max_segments": 2}),
]


@pytest.mark.parametrize(("width", "params"), [r[1:] for r in RANDOM],
                         ids=[r[0] for r in RANDOM])
def test_random(width, params):
    cosim("tb.test_system", "test_random", params, data_width=width,
          name=f"random_{params['seed']}")


@pytest.mark.parametrize("width", [32, 64, 128])
def test_gpa_only_device(width):
    """The GPA-only device (``translation=False``: no lookup latency, no lookup gate, the
    baseline of ``make bench``) against the reference model in GPA mode: the basic requests,
    then seeded random ones under random latency and backpressure."""
    cosim("tb.test_system", "test_basic", {"handle_mode": False}, data_width=width,
          name="basic_gpaonly", translation=False)
    cosim("tb.test_system", "test_random", {"handle_mode": False, "seed": 21 + width,
                                            "requests": 100, "timing": 9},
          data_width=width, name="random_gpaonly", translation=False)


@pytest.mark.parametrize("mode", ["handle", "gpa"])
def test_index_wrap(mode):
    cosim("tb.test_system", "test_index_wrap", {"handle_mode": mode == "handle"},
          name=f"wrap_{mode}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault(case):
    cosim("tb.test_faults", "test_fault", {"case": case, "handle_mode": True},
          name=f"fault_{case}")


@pytest.mark.parametrize("case", ["bus_error_desc", "bus_error_used", "chain_loop",
                                  "avail_jump", "status_readable"])
def test_fault_gpa(case):
    cosim("tb.test_faults", "test_fault", {"case": case, "handle_mode": False},
          name=f"fault_gpa_{case}")


@pytest.mark.parametrize("case", ["bus_error_data_write", "second_page_ungranted"])
def test_fault_under_backpressure(case):
    cosim("tb.test_faults", "test_fault", {"case": case, "timing": 9}, data_width=32,
          name=f"fault_bp_{case}")


def test_iova_identity():
    """IOVA mode on the RTL: every page mapped at itself, each missed once, then hit."""
    cosim("tb.test_iova", "test_identity_iova", {"latency": 5}, name="iova_identity")


@pytest.mark.parametrize(("width", "params"), [
    (64, {"seed": 1, "requests": 40, "latency": 5}),
    (32, {"seed": 4, "requests": 30, "latency": 0}),
    (128, {"seed": 2, "requests": 30, "latency": 50}),
], ids=["w64", "w32-latency0", "w128-latency50"])
def test_iova_driver(width, params):
    """The driver through IOVA handles against the reference model: the same misses."""
    cosim("tb.test_iova", "test_iova_driver", params, data_width=width,
          name=f"iova_driver_{params['seed']}")
