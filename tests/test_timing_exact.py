"""Cycle exactness: on the deterministic memory every ``m_axi`` address handshake and every
completion happens on the cycle ``models.timing`` predicts (docs/timing.md), in both modes, at
memory latencies 0, 4 and 32. A divergence fails with the first differing transaction and both
cycles.

IOVA mode (``tb/bench_iova.py``): every completion on the cycle the model predicts, on a warm
IOTLB (the grant-mode cycles, no miss) and with misses resolved by the hypervisor coroutine
after several latencies (the model given each ``MISS_RESOLVE`` write's acceptance cycle)."""

from __future__ import annotations

import pytest

from tb.runner import DeviceConfig, run
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


def iova(params: dict, tmp_path, *, name: str, iotlb_entries: int = 64,
         data_width: int = 64) -> None:
    out = tmp_path / f"{name}.jsonl"
    tests, failed, xml = run("tb.bench_iova", DeviceConfig(data_width=data_width,
                                                           iotlb_entries=iotlb_entries),
                             testcase="test_iova", params={**params, "out": str(out)},
                             results_name=name)
    assert tests == 1 and failed == 0, f"tb.bench_iova with {params} failed; results {xml}"


@pytest.mark.parametrize("latency", [0, 32])
def test_cycle_exact_iova_warm(latency, tmp_path):
    rows = [{"size": size, "pattern": pattern, "align": align, "in_flight": n}
            for size, pattern, align, n in ((512, "random", "unaligned", 1),
                                            (16384, "seq", "unaligned", 1),
                                            (4096, "random", "aligned", 8))]
    iova({"latency": latency, "warm": rows}, tmp_path, name=f"timing_iova_warm_{latency}")


def test_cycle_exact_iova_misses(tmp_path):
    """Misses on every page, answered after 0 or 300 cycles: the answer comes before and
    after the DMA engine reaches the burst (64 KiB: the next page is looked up while the
    previous page's bursts run)."""
    iova({"latency": 4, "miss": {"rows": [
        {"size": 512, "pattern": "seq", "align": "unaligned", "in_flight": 1},
        {"size": 65536, "pattern": "seq", "align": "aligned", "in_flight": 1}],
        "hv_latencies": [0, 300]}}, tmp_path, name="timing_iova_miss")


@pytest.mark.parametrize(("entries", "width"), [(8, 64), (16, 128)])
def test_cycle_exact_iova_evictions(entries, width, tmp_path):
    """Reads and writes over more pages than the IOTLB holds: misses and evictions."""
    iova({"latency": 4, "sweep": {"requests": 24, "in_flight": 4, "pool_pages": 48,
                                  "hv_latency": 11, "seed": entries, "mixed": True}},
         tmp_path, name=f"timing_iova_sweep_{entries}", iotlb_entries=entries,
         data_width=width)


def test_every_event_smoke():
    cosim("tb.test_timing", "test_every_event",
          {"mode": "grant", "requests": 8, "batch": 4, "seed": 3},
          name="events_smoke")
