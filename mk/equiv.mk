# Behaviour-preserving changes (issue 15): the device's netlist against a base revision.
#
#   make equiv                  RTLIL of 64x1024, 32x256 GPA-only and 128x4096 against main:
#                               identical apart from source locations, or proven equivalent
#                               by Yosys (tools/rtlil_equiv.py says which), about 1 minute
#   make equiv EQUIV_BASE=HEAD~1

EQUIV_BASE ?= main

.PHONY: equiv

equiv: $(STAMP)
	$(PY) tools/rtlil_equiv.py --base $(EQUIV_BASE)
