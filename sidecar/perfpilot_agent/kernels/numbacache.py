"""numba's on-disk cache when it is read-only: kernels baked into the image, read-only root fs.

numba insists on a writable cache directory: its locators write a probe file when a cached
function is *defined* (no writable directory anywhere -> RuntimeError while importing ``jit``),
and a cache miss writes the new entry. The sidecar image compiles every kernel at build time
into ``NUMBA_CACHE_DIR`` (as root; ``python -m perfpilot_agent.kernels.bake``) and runs as an
unprivileged user, usually with a read-only root filesystem. For that case ``jit`` (the only
importer of this module) selects:

* ``ReadOnlyCacheLocator`` through ``NUMBA_CACHE_LOCATOR_CLASSES``: ``NUMBA_CACHE_DIR`` without the
  write probe, so the baked entries load;
* ``tolerate_misses``: a miss compiles in memory and is not saved (one warning) instead of failing
  the call. Misses happen when the node's CPU model differs from the build machine's: numba keys
  every entry by CPU name and features (``codegen.magic_tuple()``), and the source file's content
  hash and directory (why the bake runs inside the image's own filesystem).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from typing import Any

from numba.core.caching import FunctionCache, UserProvidedCacheLocator
from numba.core.dispatcher import Dispatcher

log = logging.getLogger(__name__)
LOCATOR = f"{__name__}.ReadOnlyCacheLocator"
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_warned: list[str] = []


class ReadOnlyCacheLocator(UserProvidedCacheLocator):
    """``NUMBA_CACHE_DIR`` as is: loading needs neither a new directory nor write access."""

    def ensure_cache_path(self) -> None:
        return None


class _MissTolerantCache(FunctionCache):
    """A FunctionCache whose save is skipped when the directory cannot be written."""

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)  # type: ignore[no-untyped-call]
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            if not _warned:
                log.warning(
                    "numba cache %s is read-only and has no entry for this CPU (%s): %s and the kernels it "
                    "calls were compiled in memory, not loaded. The image's kernels were compiled on another "
                    "CPU model; build the image on the nodes' CPU model or mount a writable volume at "
                    "NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR"), _cpu_name(), self._name)
            _warned.append(self._name)


def _cpu_name() -> str:
    import llvmlite.binding as llvm

    return str(llvm.get_host_cpu_name())


def tolerate_misses(objects: Iterable[Any]) -> int:
    """Give every cached numba dispatcher in ``objects`` the miss-tolerant cache; returns how many."""
    n = 0
    for obj in objects:
        if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), FunctionCache):
            setattr(obj, "_cache", _MissTolerantCache(obj.py_func))  # type: ignore[no-untyped-call]  # noqa: B010
            n += 1
    return n


def misses() -> list[str]:
    """Functions compiled in memory because the read-only cache had no entry (for tests/logs)."""
    return list(_warned)
