"""Shared pytest set-up: make ``scripts/`` importable, so tests can ``import lesiondata``.

Only the ``scripts`` folder itself goes on ``sys.path`` (it is not a package), so ``lesiondata`` is importable
without shadowing the bundles' own ``scripts`` packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))
