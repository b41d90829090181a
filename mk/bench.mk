# make bench: handle translation against GPA addressing, cycle counts side by side
# (tb/benchmark.py), and IOVA mode (tb/bench_iova.py, docs/bench-iova.md): a warm IOTLB
# against GPA, the device's own cycles per miss, hit rate against IOTLB_ENTRIES (one build
# per size). BENCH_ARGS=--quick runs the default configuration only (4 IOTLB sizes).
# The simulator processes run as Dask tasks (docs/campaigns.md): a local cluster of JOBS
# workers (JOBS=1: in one process), or a running cluster's workers with SCHEDULER=tcp://host:port;
# an interrupted sweep resumes (build/bench/shards).
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS  ?=
SCHEDULER   ?=

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

.PHONY: bench
bench: $(BENCH_STAMP) check-sim
	$(PY) -m tb.benchmark --jobs $(JOBS) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
	  $(BENCH_ARGS)
