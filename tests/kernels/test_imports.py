"""numba is imported in one place only: the parent never loads it by importing the pool."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import perfpilot_agent.kernels
import perfpilot_agent.kernels.registry
import perfpilot_agent.kernels.pool
import perfpilot_agent.kernels.supervision
import perfpilot_agent.kernels.dispatch
import perfpilot_agent.kernels.staging
import perfpilot_agent.kernels.process
import perfpilot_agent.kernels.shm
import perfpilot_agent.kernels.errors
bad = sorted(m for m in sys.modules if m == "numba" or m.startswith(("numba.", "llvmlite")))
print(",".join(bad))
"""


def test_importing_registry_and_pool_does_not_import_numba():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_importing_jit_does_import_numba_and_sets_env():
    code = "import os, sys\nos.environ.pop('NUMBA_CACHE_DIR', None)\nimport perfpilot_agent.kernels.jit\n" \
        "print('numba' in sys.modules, os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, cache = out.stdout.split()
    assert loaded == "True"
    assert cache.endswith("/.cache/perfpilot/numba")


def test_jit_is_the_only_module_importing_numba():
    """numbacache (the read-only cache support) is jit's helper: only jit imports it."""
    import re
    from pathlib import Path

    import perfpilot_agent.kernels as pkg

    pattern = re.compile(r"^\s*(import numba|from numba)", re.M)
    importers = sorted(p.name for p in Path(pkg.__file__).parent.glob("*.py") if pattern.search(p.read_text()))
    assert importers == ["jit.py", "numbacache.py"]
    uses = re.compile(r"^\s*(from \S* import numbacache|import \S*numbacache)", re.M)
    users = sorted(p.name for p in Path(pkg.__file__).parent.glob("*.py") if uses.search(p.read_text()))
    assert users == ["jit.py"]
