"""Verification over the reference model: random sources (choosers), world, case generators
(cases), oracle, the hostile stream driver (stream), a hand-written driver (harness)."""
