"""The formal proof of the translation unit (``formal/translate.py``, ``make formal``) inside
``make test``: k-induction of the isolation properties at depth 5 for a 1024-entry and a
12-entry table, and the covers that show they are not vacuous (about 25 s on one core)."""

from __future__ import annotations

import pytest

from formal import translate
from tb.runner import ROOT


def test_translation_unit_proof(capsys):
    problem = translate.check_tools()
    if problem:
        pytest.skip(f"formal tools missing: {problem}")
    rc = translate.main(["--out", str(ROOT / "build" / "formal-test")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(": PASS in") == 8, out
