"""Issue 17's features on the RTL, directed (``tb/test_features.py``): indirect tables,
DISCARD and WRITE_ZEROES, the SEG_MAX and SIZE_MAX limits, EVENT_IDX; each against the
reference model, with the outcome the contract gives checked on both."""

from __future__ import annotations

import pytest

from tb.runner import DeviceConfig, run

pytestmark = pytest.mark.sim

PARAMS: dict = {}
CASES = ["test_indirect_out_in", "test_write_zeroes_and_discard", "test_limits",
         "test_event_idx"]


# Every case at data width 64; the indirect case (descriptor reads at any alignment, the
# width-dependent burst paths) at 32 and 128 too. (The cycle-exact and adversarial benches
# run the features at every width.)
RUNS = [(case, 64) for case in CASES] + [("test_indirect_out_in", 32),
                                         ("test_indirect_out_in", 128),
                                         ("test_write_zeroes_and_discard", 32)]


@pytest.mark.parametrize(("case", "width"), RUNS, ids=[f"{c}-{w}" for c, w in RUNS])
def test_features(case, width):
    tests, failed, xml = run("tb.test_features", DeviceConfig(data_width=width), testcase=case,
                             params=PARAMS, results_name=f"features_{case}")
    assert tests == 1, f"{case} did not run (see {xml})"
    assert failed == 0, f"{case} failed; log above, results {xml}"
