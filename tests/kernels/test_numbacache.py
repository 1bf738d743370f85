"""numba's cache on a read-only filesystem (the sidecar image's baked kernels): entries load
without a write, and a miss (another CPU model; simulated with NUMBA_CPU_NAME) compiles in memory
with a warning instead of failing the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only tmpfs")

CODE = """
import json, logging, numpy as np
logging.basicConfig(level=logging.WARNING)
from perfpilot_agent.kernels import jit
jit.warm(["weighted_mean"], variants=(False,))
out = jit.run_kernel("weighted_mean", {"values": np.arange(8, dtype=np.float32).reshape(4, 2),
                                        "weights": np.ones(4)}, {}, parallel=False)
misses = []
if jit.CACHE_READ_ONLY:
    from perfpilot_agent.kernels import numbacache
    misses = numbacache.misses()
print(json.dumps({"read_only": jit.CACHE_READ_ONLY, "misses": len(misses), "mean": out["mean"].tolist()}))
"""


def _run(cache: Path, **env: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(cache), **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _listing(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "ro"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_baked_cache_loads_read_only_and_a_miss_compiles_in_memory(mount: Path) -> None:
    cache = mount / "numba"
    baked, _ = _run(cache)
    assert baked == {"read_only": False, "misses": 0, "mean": [3.0, 4.0]}
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    before = _listing(cache)
    assert before

    hit, err = _run(cache)
    assert hit == {"read_only": True, "misses": 0, "mean": [3.0, 4.0]}
    assert "compiled in memory" not in err

    miss, err = _run(cache, NUMBA_CPU_NAME="generic")
    assert miss["read_only"] is True and miss["mean"] == [3.0, 4.0]
    assert int(miss["misses"]) > 0  # type: ignore[call-overload]
    assert "has no entry for this CPU" in err
    assert _listing(cache) == before
