"""``make bench``'s plan (pure Python, no simulator): every process of the quick and the full
sweep has a shard key and a raw-file name of its own, and each sweep's (mode, latency, width)
has its GPA-mode, handle-mode and GPA-only-device processes side by side."""

from __future__ import annotations

import pytest

from tb.benchmark import plan, proc_name, shard, sweep_mode


@pytest.mark.parametrize("quick", [True, False])
def test_plan_names_and_keys_unique(quick):
    procs = plan(quick)
    names = [proc_name(p) for p in procs]
    assert len(names) == len(set(names)), names
    keys = [shard(p, "digest").key for p in procs]
    assert len(keys) == len(set(keys))
    sweeps = {}
    for p in procs:
        if not p.get("bench"):
            sweeps.setdefault((p["data_width"], p["latency"]), set()).add(sweep_mode(p))
    assert sweeps and all(m == {"gpa", "handle", "gpa-only"} for m in sweeps.values()), sweeps
    assert {p.get("bench") for p in procs} >= {None, "iova", "traffic"}
