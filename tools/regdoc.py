"""The register tables of README.md and docs/architecture.md, from models/regmap.py: a table stands
between ``<!-- regdoc guest -->`` (or ``hv``) and ``<!-- /regdoc -->``; ``tests/test_regdoc.py``
fails when one differs. ``PYTHONPATH=. python tools/regdoc.py [FILE...]`` prints both tables, or
rewrites them in each FILE."""

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
    for path in map(Path, sys.argv[1:]):
        path.write_text(regenerate(path.read_text()))
    if len(sys.argv) == 1:
        empty = "".join(f"<!-- regdoc {name} -->\n<!-- /regdoc -->\n\n" for name in MAPS)
        print(regenerate(empty), end="")
