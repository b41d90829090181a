"""Verification: stimulus, oracles and campaign runners over the reference model (``models/``).

choosers (random sources), world (memory layout, cases), cases (the hostile generators),
oracle (expected outcomes, bounds), stream (the hostile driver, streams on the reference),
harness (a hand-written driver for unit tests of the model). Imports sw/ and models/;
nothing below tb/ imports it.
"""
