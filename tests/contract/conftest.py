"""tests/contract reuses the CRD schema walker of tests/crd (pyyaml only, no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "crd"))
