"""Shared pytest configuration."""

import os

# Hypothesis: deterministic example generation, no per-example deadline (CI machines vary).
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
