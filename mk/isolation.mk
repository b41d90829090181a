# Isolation under attack (issue 4, docs/isolation.md): the formal proofs of the translation unit
# and of the IOTLB, and the adversarial soak of the RTL.
#
#   make formal        k-induction of the translation unit and of the IOTLB (8 entries), the
#                      IOTLB's covers and its mutants (yowasp-sby and Yices from PyPI; a few
#                      minutes); the bounded check of isolation through the DMA engine, its
#                      covers and its mutants (formal/dma.py; longer: docs/isolation.md)
#   make soak          100,000 adversarial RTL cases as Dask tasks on a local cluster of one
#                      worker per core, with a progress bar (docs/campaigns.md); the hostile
#                      streams draw issue 17's categories too (indirect tables, EVENT_IDX,
#                      limits, DISCARD/WRITE_ZEROES) and read the whole disk back at the end
#   make soak SOAK_CASES=600 SOAK_PER_STREAM=100 SOAK_JOBS=1
#                      a small soak (a few minutes)
#   make soak SOAK_CASES=20000 SOAK_SEED=1001 SOAK_JOBS=2
#                      another seed range; rerunning a command resumes it (finished streams
#                      are kept in $(SOAK_OUT)); SOAK_JOBS=1 runs in one process
#   make soak SCHEDULER=tcp://host:8786
#                      on the workers of a running Dask cluster instead

SOAK_CASES      ?= 100000
SOAK_SEED       ?= 1
SOAK_JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
SOAK_PER_STREAM ?= 500
SOAK_OUT        ?= build/soak
SCHEDULER       ?=

.PHONY: formal soak

formal: $(STAMP)
	$(PY) -m formal.translate
	$(PY) -m formal.iotlb
	$(PY) -m formal.dma

soak: $(STAMP) check-sim
	$(PY) -m tb.soak --cases $(SOAK_CASES) --seed $(SOAK_SEED) --jobs $(SOAK_JOBS) \
	  --per-stream $(SOAK_PER_STREAM) --out $(SOAK_OUT) \
	  $(if $(SCHEDULER),--scheduler $(SCHEDULER))
