"""``make bench``'s plan (pure Python, no simulator): every process of the quick and the full
sweep has a shard key and a raw-file name of its own, and each sweep's (mode, latency, width)
has its GPA-mode, handle-mode and GPA-only-device processes side by side."""

from __future__ import annotations

import json

import pytest

from tb.benchmark import (
    features_from,
    features_markdown,
    plan,
    proc_name,
    rows_from,
    shard,
    sweep_mode,
)


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


@pytest.mark.parametrize("quick", [True, False])
def test_plan_has_issue_17_rows(quick):
    """A 64 KiB request as 16 page-sized segments, direct and indirect, in GPA and handle mode;
    interrupts at 32 in flight without and with EVENT_IDX, in the quick run too."""
    procs = [p for p in plan(quick) if p.get("bench") == "features"]
    assert sorted(p["params"]["handle_mode"] for p in procs) == [False, True]
    for p in procs:
        seg = p["params"]["segments"]["rows"]
        assert {(r["op"], r["size"], r["layout"]) for r in seg} >= {
            ("read", 65536, "direct"), ("read", 65536, "indirect")}
        assert p["params"]["features"] == "all"
        irq = p["params"]["interrupts"]
        assert irq["in_flight"] == 32
        assert {"no_event_idx", "enable_cb"} <= set(irq["variants"])


def test_features_report(tmp_path):
    """features_from: per-request figures and the indirect/direct and handle/GPA ratios;
    rows_from leaves the issue 17 lines alone."""
    raw = tmp_path / "f.jsonl"
    common = {"mem_latency": 4, "data_width": 64}
    lines = [{"kind": "segments", "op": "read", "size": 65536, "layout": lay, "in_flight": 1,
              "cycles": c, "requests": 2, "mode": mode, **common}
             for lay, mode, c in (("direct", "gpa", 2000), ("indirect", "gpa", 1800),
                                  ("direct", "handle", 2200), ("indirect", "handle", 1980))]
    lines += [{"kind": "interrupts", "variant": v, "mode": "gpa", "requests": 128,
               "in_flight": 32, "size": 4096, "kicks": k, "kicks_suppressed": 0,
               "interrupts": i, "wakes": i, "irq_rises": i, "notifies_seen": k,
               "cycles": 128 * 600, "event_idx": v != "no_event_idx", "policy": "enable_cb",
               **common} for v, k, i in (("no_event_idx", 97, 128), ("enable_cb", 4, 8))]
    raw.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert rows_from([raw]) == []
    feat = features_from([raw])
    seg = {(r["layout"], r["mode"]): r for r in feat["segments"]}
    assert seg[("indirect", "gpa")]["indirect_direct_ratio"] == 0.9
    assert seg[("indirect", "handle")]["handle_gpa_ratio"] == 1.1
    assert seg[("direct", "gpa")]["cycles_per_request"] == 1000
    assert seg[("direct", "gpa")]["indirect_direct_ratio"] is None
    irq = {r["variant"]: r for r in feat["interrupts"]}
    assert irq["enable_cb"]["interrupts_per_request"] == 0.0625
    assert irq["no_event_idx"]["kicks_per_request"] == round(97 / 128, 4)
    md = features_markdown(feat)
    assert "virtqueue_enable_cb" in md and "| read | 65536 | 16 | 1 | indirect | gpa |" in md
