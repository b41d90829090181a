# make bench: handle translation against GPA addressing, cycle counts side by side
# (tb/benchmark.py), and IOVA mode (tb/bench_iova.py, docs/bench-iova.md): a warm IOTLB
# against GPA, the device's own cycles per miss, hit rate against IOTLB_ENTRIES (one build
# per size), and issue 17's rows (tb/bench_features.py: a 64 KiB request as 16 page-sized
# segments in a direct chain and through an indirect table; kicks and interrupts per request at
# 32 in flight with and without EVENT_IDX; build/bench/features.md). BENCH_ARGS=--quick runs
# the default configuration only (4 IOTLB sizes; reads only in the segment rows).
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
