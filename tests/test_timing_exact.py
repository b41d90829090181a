"""Cycle exactness: on the deterministic memory every ``m_axi`` address handshake and every
completion happens on the cycle ``models.timing`` predicts (docs/timing.md), in both modes, at
memory latencies 0, 4 and 32. A divergence fails with the first differing transaction and both
cycles.

IOVA mode (``tb/bench_iova.py``): every completion on the cycle the model predicts, on a warm
IOTLB (the grant-mode cycles, no miss) and with misses resolved by the hypervisor coroutine
after several latencies (the model given each ``MISS_RESOLVE`` write's acceptance cycle).

Every event (``test_every_event``): on a memory with random latency and backpressure on every
channel, with bus errors and every fault cause, in grant, GPA and IOVA mode, every handshake the
device drives, every ``irq`` edge and the cycle each fault shows in the fault and status
registers happen on the cycle ``TimedDevice.events`` predicts (docs/timing.md "Every event")."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize(("mode", "latency"), [("handle", 0), ("gpa", 4), ("handle", 32)])
def test_cycle_exact_features(mode, latency):
    """Issue 17's features (tb/test_timing.py "Issue 17's features"): INDIRECT_DESC and
    EVENT_IDX negotiated, requests through indirect tables or direct chains, DISCARD and
    WRITE_ZEROES with every status, a request over SIZE_MAX and one over SEG_MAX; every third
    batch with the interrupt suppressed by used_event."""
    cosim("tb.test_timing", "test_cycle_exact",
          {"handle_mode": mode == "handle", "latency": latency, "requests": 12, "batch": 5,
           "seed": 40 + latency, "features": True}, name=f"timing_feat_{mode}_{latency}")


def test_cycle_exact_features_w32():
    """The same at data width 32, where an indirect table's entries take 4 cycles each (the
    entry is two words out of the table buffer) and the first one 6 after the table's read."""
    cosim("tb.test_timing", "test_cycle_exact",
          {"handle_mode": True, "latency": 4, "requests": 12, "batch": 5, "seed": 92,
           "features": True}, data_width=32, name="timing_feat_w32")


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


# -- Every event (docs/timing.md "Every event"): random memory timing, every fault cause ---------
# The fast sample (make test): each mode, a few batches, and the fault cases
# split so that every cause of models/spec.py is raised once: 1-5 in grant mode, 6 (each
# place: descriptor read, data read, data write, used element) and 7-9 spread over grant and
# GPA mode, 10, 11 and 5 in IOVA mode. The long version: make timing (TIMING_LONG=1).
FAULTS = {
    "grant": ["not_a_handle", "ref_outside", "not_permitted", "wrong_domain", "read_only",
              "second_page_ungranted", "bus_error_data_write", "chain_loop"],
    "gpa": ["bus_error_desc", "bus_error_data_read", "bus_error_used", "index_outside",
            "readable_after_writable", "avail_jump", "status_readable", "header_writable"],
    "iova": ["iova_fail", "iova_no_read", "iova_read_only"],
}
# issue 17's malformed indirect tables (tb/test_timing.py INDIRECT_CASES), in the features runs
INDIRECT_FAULTS = ["indirect_len", "indirect_next", "indirect_nested", "indirect_loop"]
HANDLE_ONLY = FAULTS["grant"][:6]
ALL_FAULTS = FAULTS["grant"] + FAULTS["gpa"]


@pytest.mark.parametrize("mode", ["grant", "gpa", "iova"])
def test_every_event(mode):
    """Every AR, AW, W, R, B, irq edge, fault latch and NEEDS_RESET on the predicted cycle."""
    cosim("tb.test_timing", "test_every_event",
          {"mode": mode, "requests": 8 if mode == "iova" else 12, "batch": 4,
           "seed": {"grant": 3, "gpa": 4, "iova": 5}[mode], "stall": 0.3, "max_latency": 12,
           "faults": FAULTS[mode], "fault_every": 1, "page_tail": mode == "grant"},
          name=f"events_{mode}")


@pytest.mark.parametrize("mode", ["grant", "iova"])
def test_every_event_features(mode):
    """Issue 17's features (as test_cycle_exact_features) on the random memory, with the
    malformed indirect tables as fault cases (grant mode) or misses on every page (IOVA)."""
    cosim("tb.test_timing", "test_every_event",
          {"mode": mode, "requests": 8, "batch": 5, "seed": {"grant": 8, "iova": 9}[mode],
           "stall": 0.3, "max_latency": 12, "features": True,
           "faults": INDIRECT_FAULTS if mode == "grant" else [], "fault_every": 1},
          name=f"events_feat_{mode}")


def test_every_event_gpa_only():
    """The GPA-only device (``translation=False``: no burst waits for a lookup)."""
    tests, failed, xml = run("tb.test_timing", DeviceConfig(translation=False),
                             testcase="test_every_event",
                             params={"mode": "gpa", "requests": 4, "batch": 4, "seed": 6,
                                     "page_tail": True,
                                     "faults": ["bus_error_data_write", "chain_loop"],
                                     "fault_every": 1}, results_name="events_gpaonly")
    assert tests == 1 and failed == 0, f"tb.test_timing on the GPA-only device failed; {xml}"


LONG = os.environ.get("TIMING_LONG") == "1"


@pytest.mark.skipif(not LONG, reason="the long event-exact runs: make timing")
@pytest.mark.parametrize(("mode", "width", "seed", "stall", "max_latency"), [
    ("grant", 64, 101, 0.3, 12), ("gpa", 64, 102, 0.3, 12), ("iova", 64, 103, 0.3, 12),
    ("grant", 32, 104, 0.5, 24), ("gpa", 128, 105, 0.1, 40), ("iova", 128, 106, 0.5, 6)])
def test_every_event_long(mode, width, seed, stall, max_latency):
    """300 requests (up to 16 sectors, batches of 6) and every fault case of the mode, twice."""
    faults = {"grant": ALL_FAULTS,
              "gpa": [f for f in ALL_FAULTS if f not in HANDLE_ONLY],
              "iova": FAULTS["iova"] + [f for f in ALL_FAULTS if f not in HANDLE_ONLY]}[mode]
    cosim("tb.test_timing", "test_every_event",
          {"mode": mode, "requests": 300, "batch": 6, "max_sectors": 16, "seed": seed,
           "stall": stall, "max_latency": max_latency, "faults": faults * 2,
           "fault_every": 1}, data_width=width, name=f"events_long_{mode}_{width}")


@pytest.mark.skipif(not LONG, reason="the long event-exact runs: make timing")
@pytest.mark.parametrize(("mode", "width", "seed", "stall", "max_latency"), [
    ("grant", 64, 111, 0.3, 12), ("gpa", 32, 112, 0.5, 24), ("iova", 128, 113, 0.3, 12)])
def test_every_event_long_features(mode, width, seed, stall, max_latency):
    """Issue 17's features (as test_every_event_features): 150 random requests, through
    indirect tables or direct chains, with a set of DISCARD/WRITE_ZEROES requests (one zeroing
    the whole disk) and the two over the limits per 25, batches of 6; the malformed indirect
    tables twice as fault cases (with the mode's other fault cases in grant mode)."""
    faults = INDIRECT_FAULTS * 2 + (ALL_FAULTS if mode == "grant" else [])
    cosim("tb.test_timing", "test_every_event",
          {"mode": mode, "requests": 150, "batch": 6, "max_sectors": 16, "seed": seed,
           "stall": stall, "max_latency": max_latency, "features": True, "big_zero": True,
           "faults": faults, "fault_every": 1}, data_width=width,
          name=f"events_long_feat_{mode}_{width}")
