# Isolation under attack (issue 4, docs/isolation.md): the formal proofs of the translation unit
# and of the IOTLB, and the adversarial soak of the RTL.
#
#   make formal        k-induction of the translation unit and of the IOTLB (8 entries), the
#                      IOTLB's covers and its mutants (yowasp-sby and Yices from PyPI; a few
#                      minutes); the bounded check of isolation through the DMA engine, its
#                      covers and its mutants (formal/dma.py; longer: docs/isolation.md)
#   make soak          100,000 adversarial RTL cases on every core, with a progress bar
#   make soak SOAK_CASES=20000 SOAK_SEED=1001 SOAK_JOBS=2
#                      another seed range; rerunning a command resumes it (finished streams
#                      are kept in $(SOAK_OUT))

SOAK_CASES      ?= 100000
SOAK_SEED       ?= 1
SOAK_JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
SOAK_PER_STREAM ?= 500
SOAK_OUT        ?= build/soak

.PHONY: formal soak

formal: $(STAMP)
	$(PY) -m formal.translate
	$(PY) -m formal.iotlb
	$(PY) -m formal.dma

soak: $(STAMP) check-sim
	$(PY) -m tb.soak --cases $(SOAK_CASES) --seed $(SOAK_SEED) --jobs $(SOAK_JOBS) \
	  --per-stream $(SOAK_PER_STREAM) --out $(SOAK_OUT)
