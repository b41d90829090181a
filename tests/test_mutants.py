"""The mutation tool itself (``verif/mutants.py``, docs/mutants.md), fast: every mutant of the
list applies exactly once to the current RTL, a snippet that does not is refused with the
mutant's name, a cheap mutant is killed by its suite (run in a private copy of the tree), a
change that leaves the design the same is reported as unchanged, a hang counts as a timeout,
and the report has its keys. ``make mutants`` runs the whole list."""

from __future__ import annotations

import json

import pytest

from verif import mutants
from verif.mutants import MUTANTS, ROOT, Mutant, MutantError


def test_every_mutant_applies_exactly_once():
    assert mutants.check_all() == []
    assert len(MUTANTS) >= 30
    files = {mu.file for mu in MUTANTS}
    assert {"rtl/translate.py", "rtl/dma.py", "rtl/engine.py", "rtl/iotlb.py",
            "rtl/hvregs.py"} <= files


def test_a_missing_snippet_names_the_mutant():
    bogus = Mutant("bogus", "rtl/translate.py", "no such text", "x", "nothing", "translate")
    with pytest.raises(MutantError, match=r"^mutant bogus: its snippet 'no such text' occurs 0 "
                                          r"times in rtl/translate.py"):
        mutants.mutated_text(bogus)


def test_a_snippet_found_twice_is_refused():
    twice = Mutant("twice", "rtl/translate.py", "lk.stale.eq(tb.cfg_changed\n", "x", "",
                   "translate")
    with pytest.raises(MutantError, match=r"^mutant twice: .* occurs 2 times"):
        mutants.mutated_text(twice)


def test_the_repository_is_never_edited():
    with pytest.raises(MutantError, match="refusing to edit the repository"):
        mutants.apply(MUTANTS[0], ROOT)


@pytest.fixture
def only_xlate12(monkeypatch):
    """Compare the 12-entry translation unit only (seconds, not the whole device)."""
    monkeypatch.setitem(mutants.FILE_DESIGNS, "rtl/translate.py", ("xlate12",))
    return mutants.tree_digests(ROOT, ("xlate12",))


def test_a_cheap_mutant_is_killed(tmp_path, only_xlate12):
    mu = mutants.by_name()["xlate_domain_dropped"]
    rec = mutants.run_mutant(mu, tmp_path, only_xlate12)
    assert rec["status"] == "killed" and rec["killed"] is True, rec
    assert rec["test"].startswith("tests/test_rtl_translate.py::"), rec
    assert not (tmp_path / mu.name).exists()  # the private tree is removed
    assert "rtl/translate.py" not in mutants.check_all()  # (and the repository untouched)


def test_a_comment_is_an_unchanged_design(tmp_path, only_xlate12):
    mu = Mutant("comment", "rtl/translate.py", "fault = Signal(4)\n        grant_ok",
                "fault = Signal(4)  # mutated\n        grant_ok", "a comment", "translate")
    rec = mutants.run_mutant(mu, tmp_path, only_xlate12)
    assert (rec["status"], rec["killed"], rec["test"]) == ("unchanged", False, None), rec


def test_a_hang_is_a_timeout(tmp_path):
    tree = mutants.copy_tree(tmp_path / "tree")
    outcome, test = mutants.run_suite(tree, ["tests/test_rtl_registers.py"], 0.5,
                                      tmp_path / "log")
    assert (outcome, test) == ("timeout", None)


def test_report_keys(tmp_path):
    recs = [{"mutant": mu.name, "file": mu.file, "killed": i == 0, "test": "t" if i == 0 else None,
             "status": "killed" if i == 0 else "survived", "what": mu.what, "suite": mu.suite,
             "seconds": 1.0, "detail": ""} for i, mu in enumerate(MUTANTS[:2])]
    mutants.write_report(recs, tmp_path, command="x", wall=60, jobs=2)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [set(r) >= {"mutant", "file", "killed", "test"} for r in data] == [True, True]
    md = (tmp_path / "report.md").read_text()
    assert "2 mutants, 1 killed" in md and "**SURVIVED**" in md


def test_docs_list_every_mutant():
    text = (ROOT / "docs" / "mutants.md").read_text()
    assert [mu.name for mu in MUTANTS if f"| `{mu.name}` |" not in text] == []
