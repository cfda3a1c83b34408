"""Makes the generated code importable for the contract tests.

An installed checkout (``pip install -e .``) already maps ``gen/python`` and
``gen/sdk-python``; a plain one gets them appended to ``sys.path`` here, after everything
else, so an installed copy still wins.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

for _root in (REPO, REPO / "gen" / "python", REPO / "gen" / "sdk-python"):
    if str(_root) not in sys.path:
        sys.path.append(str(_root))
