"""Isolation through the DMA engine (``formal/dma.py``) inside ``make test``, at a reduced depth.

``make formal`` runs the full configuration (a bounded check to depth 12, the covers, the eight
mutants; docs/isolation.md). Here, on the same harness (privileged registers, translation unit
with 6 entries, DMA engine at 32-bit data): the bounded check to depth 8 (every property and
lemma, from reset, for every trace of 8 cycles), the covers of every burst shape (all reached by
step 7), and three mutants that must fail: a page split off by one (``rtl/dma.py``), a dropped
read-only check (``rtl/translate.py``) and GRANT words decoded to the wrong half of the entry
(``rtl/hvregs.py``). The formal tools are dev dependencies (``make venv``): missing, the test
fails rather than skips.
"""

from __future__ import annotations

from formal import dma, translate
from tb.runner import ROOT

QUICK_MUTANTS = ["page_split_cross", "readonly_dropped", "grant_words_swapped"]


def test_dma_isolation_bounded(capsys):
    problem = translate.check_tools()
    assert problem is None, f"formal tools missing: {problem}"
    rc = dma.main(["--out", str(ROOT / "build" / "formal-test"), "--bmc-depth", "8",
                   "--cover-depth", "8", "--mutant-depth", "10", "--mutants", *QUICK_MUTANTS])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bmc   (bounded, depth 8): PASS in" in out, out
    assert "cover (cover, depth 8): PASS in" in out, out
    for name in QUICK_MUTANTS:
        assert f"mutant {name} bmc   (bounded, depth 10): FAIL as it must" in out, out


def test_dma_mutants_apply():
    """Every mutant's text is in its RTL file exactly once (else the mutant would not exist),
    and the harness builds with it."""
    for name in dma.MUTANTS:
        classes = dma.load_variant(name)
        assert set(classes) == {"DmaEngine", "TranslationUnit", "PrivilegedRegs"}
