"""Shared-memory segments for large kernel inputs, pooled between calls (no NumPy needed here).

Segments the client creates for inputs are kept for reuse by the next call (SegmentPool, unlinked
when the client closes).
"""

from __future__ import annotations

import os
import threading
from multiprocessing import resource_tracker, shared_memory


def drop(seg: shared_memory.SharedMemory) -> None:
    seg.close()
    try:
        seg.unlink()
    except FileNotFoundError:
        pass
    except PermissionError:
        # A sticky /dev/shm (the host's, not the pod's emptyDir) keeps another uid's file (the
        # sidecar's outputs): the sidecar unlinks them after their grace period anyway.
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]


def new_segment(nbytes: int) -> shared_memory.SharedMemory:
    """A segment the sidecar can read although it runs as another uid (the injected sidecar is
    65532, the app anything): SharedMemory creates 0600. Readable by the pod only: /dev/shm is
    the pod's own tmpfs."""
    seg = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
    os.fchmod(seg._fd, 0o644)  # type: ignore[attr-defined]
    return seg


class SegmentPool:
    """Input segments kept between calls. A fresh segment pays a page fault for every 4 KiB page
    on first write (tens of ms for ~100 MB); a reused one is already mapped and resident. At most
    `max_bytes` are kept (oldest unlinked first); a segment serves arrays from half its size up,
    so a small array never pins a large segment. Thread-safe; close() unlinks everything."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: list[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> shared_memory.SharedMemory:
        with self._lock:
            fits = [s for s in self._free if nbytes <= s.size <= 2 * max(nbytes, 1)]
            if fits:
                seg = min(fits, key=lambda s: s.size)
                self._free.remove(seg)
                return seg
        return new_segment(nbytes)

    def release(self, segments: list[shared_memory.SharedMemory]) -> None:
        with self._lock:
            self._free.extend(segments)
            evict = []
            while self._free and sum(s.size for s in self._free) > self.max_bytes:
                evict.append(self._free.pop(0))
        for seg in evict:
            drop(seg)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for seg in free:
            drop(seg)


class Segments:
    """Shared-memory segments used by one call; released with close() once the agent answered
    (back to the pool when there is one, else unlinked)."""

    def __init__(self, pool: SegmentPool | None = None) -> None:
        self.items: list[shared_memory.SharedMemory] = []
        self.pool = pool

    def new(self, nbytes: int) -> shared_memory.SharedMemory:
        seg = self.pool.acquire(nbytes) if self.pool is not None else new_segment(nbytes)
        self.items.append(seg)
        return seg

    def close(self) -> None:
        """Release everything (the agent has finished reading)."""
        items, self.items = self.items, []
        if self.pool is not None:
            self.pool.release(items)
        else:
            for seg in items:
                drop(seg)
