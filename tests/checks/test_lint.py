"""ruff and mypy --strict are part of `make test`: a lint or type error fails the suite, with the
checker's own output in the failure. The same list runs alone as `make lint` (scripts/lint.py).
"""

from __future__ import annotations

import subprocess

import pytest

from scripts import lint


@pytest.mark.timeout(600)  # a cold mypy run on a busy machine
@pytest.mark.parametrize("name,cmd", lint.CHECKS, ids=[n for n, _ in lint.CHECKS])
def test_static_check_is_clean(name: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=lint.ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{name} found problems (rerun alone: make lint):\n{proc.stdout}{proc.stderr}")
