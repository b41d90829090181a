# Mutation testing of the RTL (issue 18, docs/mutants.md): small deliberate bugs in rtl/*.py,
# each applied to a private copy of the tree and run against its fast suite (pytest -x).
#
#   make mutants                    every mutant, JOBS in parallel; build/mutants/report.json
#                                   and report.md; fails if a mutant survives
#   make mutants MUTANTS_ARGS="--only dma_arlen_plus1 engine_chain_loop"
#   make mutants MUTANTS_ARGS="--file rtl/dma.py --keep"
#   make mutants MUTANTS_ARGS=--list

MUTANTS_ARGS ?=

.PHONY: mutants

mutants: $(STAMP) check-sim
	$(PY) -m verif.mutants --jobs $(JOBS) $(MUTANTS_ARGS)
