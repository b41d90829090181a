# virtio-handle: a handle-addressed virtio-blk device (Amaranth RTL, reference model, guest
# driver model, cocotb benches on Icarus Verilog).
#
#   make demo      export the Verilog, run the default workload on the RTL, print a summary
#   make test      ruff and the whole pytest suite (models, driver, RTL units, co-simulation)
#   make verilog   build/virtio_blk_handle.v (DATA_WIDTH=, ENTRIES=, IOTLB_ENTRIES=,
#                  QUEUE_NUM_MAX=, DISK_BYTES=)
#
# Everything else is bootstrapped: a .venv with the pinned Python packages, and a check that
# Icarus Verilog is installed (installed automatically on CI or when running as root).

PYTHON        ?= python3
VENV          ?= .venv
PY            := $(VENV)/bin/python
STAMP         := $(VENV)/.installed
WAVES         ?= 0
DATA_WIDTH    ?= 64
ENTRIES       ?= 1024
IOTLB_ENTRIES ?= 64
QUEUE_NUM_MAX ?= 256
DISK_BYTES    ?= 65536
TRANSLATION   ?= 1
REQUESTS      ?= 64
JOBS          ?= 2

.PHONY: demo test verilog lint unit sim clean distclean check-sim check-icarus venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: Python 3.11 or newer is needed ($(PYTHON) is $$($(PYTHON) -V 2>&1))"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
	  if [ -n "$$CI" ] || [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else echo "error: the Python venv module is missing: sudo apt-get install python3-venv"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# check-sim: the simulator SIM names (mk/sim.mk); check-icarus: Icarus Verilog
check-icarus:
	@command -v iverilog >/dev/null 2>&1 || { \
	  if [ -n "$$CI" ] || [ "$$(id -u)" = 0 ]; then \
	    echo "Icarus Verilog not found: installing Debian's iverilog package"; \
	    apt-get update -qq && apt-get install -y -qq iverilog; \
	  else \
	    echo "error: Icarus Verilog (iverilog) is not on PATH."; \
	    echo "       Install it with: sudo apt-get install iverilog"; exit 1; \
	  fi; }

verilog: $(STAMP)
	$(PY) -m rtl.export -o build/virtio_blk_handle.v --data-width $(DATA_WIDTH) \
	  --entries $(ENTRIES) --iotlb-entries $(IOTLB_ENTRIES) --queue-num-max $(QUEUE_NUM_MAX) \
	  --disk-bytes $(DISK_BYTES) $(if $(filter 0,$(TRANSLATION)),--no-translation) \
	  $(if $(FEATURES),--features $(FEATURES))

demo: $(STAMP) check-sim verilog
	@$(PY) -m tb.demo --data-width $(DATA_WIDTH) --requests $(REQUESTS) \
	  $(if $(filter 1 yes true,$(WAVES)),--waves,)

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	$(PY) -m pytest -q -m "not sim" tests

sim: $(STAMP) check-sim
	$(PY) -m pytest -q -m sim -n $(JOBS) tests

test: $(STAMP) check-sim lint
	VHB_SKIP_LINUX=1 $(PY) -m pytest -n $(JOBS) tests

clean:
	rm -rf build sim_build results.xml .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) *.egg-info

# Further targets (board build, FPGA report, formal proofs, soak runs, Linux guest) live in
# mk/*.mk, one file per topic.
-include mk/*.mk
