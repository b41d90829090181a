# make timing: the long event-exact runs (docs/timing.md "Every event"): 300 random requests and
# every fault case twice per run, in grant, GPA and IOVA mode, at three data widths, on a memory
# with random latency and backpressure; and issue 17's features (indirect tables, EVENT_IDX,
# DISCARD/WRITE_ZEROES, requests over the limits, malformed tables as fault cases), 150
# requests per mode (tests/test_timing_exact.py, TIMING_LONG=1). make test runs a small sample
# of the same benches.
.PHONY: timing
timing: $(STAMP) check-sim
	TIMING_LONG=1 $(PY) -m pytest -q -n $(JOBS) tests/test_timing_exact.py -k every_event_long
