"""Cycle exactness: on the deterministic memory every ``m_axi`` address handshake and every
completion happens on the cycle ``models.timing`` predicts (docs/timing.md), in both modes, at
memory latencies 0, 4 and 32. A divergence fails with the first differing transaction and both
cycles."""

from __future__ import annotations

import pytest

from tests.test_sim import cosim

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("latency", [0, 4, 32])
@pytest.mark.parametrize("mode", ["handle", "gpa"])
def test_cycle_exact(mode, latency):
    cosim("tb.test_timing", "test_cycle_exact",
          {"handle_mode": mode == "handle", "latency": latency, "requests": 16,
           "seed": 20 + latency}, name=f"timing_{mode}_{latency}")


@pytest.mark.parametrize("width", [32, 128])
def test_cycle_exact_widths(width):
    cosim("tb.test_timing", "test_cycle_exact",
          {"handle_mode": True, "latency": 4, "requests": 12, "seed": width},
          data_width=width, name=f"timing_w{width}")


def test_cycle_exact_32_in_flight():
    cosim("tb.test_timing", "test_cycle_exact",
          {"handle_mode": True, "latency": 4, "requests": 32, "batch": 32, "seed": 7,
           "max_sectors": 2}, name="timing_inflight32")
