"""The register tables of README.md and docs/architecture.md are those of models/regmap.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("regdoc", ROOT / "tools" / "regdoc.py")
regdoc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regdoc)


@pytest.mark.parametrize("document", ["README.md", "docs/architecture.md"])
def test_register_tables_are_generated(document):
    text = (ROOT / document).read_text()
    assert sorted(m[2] for m in regdoc.MARKED.finditer(text)) == ["guest", "hv"]
    assert text == regdoc.regenerate(text), (
        f"{document}: a register table differs from models/regmap.py; run "
        f"`PYTHONPATH=. python tools/regdoc.py {document}`")


def test_regenerate_replaces_only_the_marked_tables():
    text = "a\n<!-- regdoc hv -->\n| stale |\n<!-- /regdoc -->\nb\n"
    assert regdoc.regenerate(text) == (
        "a\n<!-- regdoc hv -->\n" + regdoc.HV.markdown() + "<!-- /regdoc -->\nb\n")
