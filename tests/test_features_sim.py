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


@pytest.mark.parametrize("width", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
def test_features(case, width):
    tests, failed, xml = run("tb.test_features", DeviceConfig(data_width=width), testcase=case,
                             params=PARAMS, results_name=f"features_{case}")
    assert tests == 1, f"{case} did not run (see {xml})"
    assert failed == 0, f"{case} failed; log above, results {xml}"
