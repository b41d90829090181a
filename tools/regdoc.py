"""The register tables of README.md and docs/architecture.md, from models/regmap.py.

    PYTHONPATH=. python tools/regdoc.py                      # print both tables
    PYTHONPATH=. python tools/regdoc.py README.md docs/architecture.md   # rewrite them there

In a document, a table stands between ``<!-- regdoc guest -->`` (or ``hv``) and
``<!-- /regdoc -->``; ``tests/test_regdoc.py`` fails when one differs from what this writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from models.regmap import GUEST, HV

MAPS = {"guest": GUEST, "hv": HV}
MARKED = re.compile(r"(<!-- regdoc (\w+) -->\n)(.*?)(<!-- /regdoc -->)", re.DOTALL)


def regenerate(text: str) -> str:
    """``text`` with every marked table written anew from its map."""
    return MARKED.sub(lambda m: m[1] + MAPS[m[2]].markdown() + m[4], text)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        for name, regmap in MAPS.items():
            print(f"<!-- regdoc {name} -->\n{regmap.markdown()}<!-- /regdoc -->\n")
    for path in map(Path, sys.argv[1:]):
        path.write_text(regenerate(path.read_text()))
