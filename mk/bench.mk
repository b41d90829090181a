# make bench: handle translation against GPA addressing, cycle counts side by side
# (tb/benchmark.py). BENCH_ARGS=--quick runs the default configuration only.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS  ?=

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

.PHONY: bench
bench: $(BENCH_STAMP) check-sim
	$(PY) -m tb.benchmark --jobs $(JOBS) $(BENCH_ARGS)
