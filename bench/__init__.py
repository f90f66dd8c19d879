"""trajhub's benchmarks: ``uv run python -m bench`` runs the whole suite (see __main__.py).

The scripts in this directory also run alone (``uv run python bench/bulk.py``) and import
their helpers as top-level modules (``import _serve``), so the package puts its own
directory on ``sys.path`` for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
