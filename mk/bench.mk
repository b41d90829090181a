# make bench: handle translation against GPA addressing, cycle counts side by side
# (tb/benchmark.py), and IOVA mode (tb/bench_iova.py, docs/bench-iova.md): a warm IOTLB
# against GPA, the device's own cycles per miss, hit rate against IOTLB_ENTRIES (one build
# per size). BENCH_ARGS=--quick runs the default configuration only (4 IOTLB sizes).
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS  ?=

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

.PHONY: bench
bench: $(BENCH_STAMP) check-sim
	$(PY) -m tb.benchmark --jobs $(JOBS) $(BENCH_ARGS)
