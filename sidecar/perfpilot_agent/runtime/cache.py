"""TTL + LRU cache for app values and kernel results.

An OrderedDict gives O(1) get/put/LRU eviction. Expired entries are dropped lazily on read and by
`sweep()` (called periodically by the app), so no timer per entry. The clock is injectable so
tests step time instead of sleeping. Not thread-safe: used from the event loop only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheCounters:
    """Cumulative counters (exported as Prometheus counters and in GetStats)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0


class TTLCache:
    """Bounded by entry count and by total bytes; each entry has its own expiry."""

    def __init__(
        self,
        *,
        max_entries: int,
        ttl: float,
        max_bytes: int = 256 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self.counters = CacheCounters()
        self.bytes = 0
        self._data: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self.on_invalidate: Callable[[str], None] | None = None
        """Called with the prefix of every invalidation made here (not those applied with notify=False,
        which came from elsewhere): the shared tier forwards it to Redis and the other replicas."""

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        """Whether an entry (live or not yet swept) is stored under `key`; no counters change."""
        return key in self._data

    def discard(self, key: str) -> bool:
        """Remove exactly `key` (an overwrite elsewhere made it stale); counted as an invalidation."""
        if key not in self._data:
            return False
        self._remove(key)
        self.counters.invalidations += 1
        return True

    def get(self, key: str) -> tuple[Any, float] | None:
        """(value, seconds left) for a live entry, else None; a hit makes the entry most recent."""
        item = self._data.get(key)
        if item is None:
            self.counters.misses += 1
            return None
        expires, value, _ = item
        now = self.clock()
        if expires <= now:
            self._remove(key)
            self.counters.expirations += 1
            self.counters.misses += 1
            return None
        self._data.move_to_end(key)
        self.counters.hits += 1
        return value, expires - now

    def put(self, key: str, value: Any, *, ttl: float | None = None, size: int = 0) -> int:
        """Insert or replace; returns how many LRU entries were evicted to make room.

        A TTL of 0 (cache.ttl: 0s, or the call's own) or maxEntries 0 means "not cached": the value
        is not stored (and an older value under the key is dropped, so a read never sees stale data).
        """
        if key in self._data:
            self._remove(key)
        ttl = self.ttl if ttl is None else ttl
        if ttl <= 0 or self.max_entries <= 0:
            return 0
        expires = self.clock() + ttl
        self._data[key] = (expires, value, size)
        self.bytes += size
        return self._evict()

    def invalidate(self, prefix: str, *, notify: bool = True) -> int:
        """Remove every entry whose key starts with `prefix` ("" removes all)."""
        if not prefix:
            removed = len(self._data)
            self._data.clear()
            self.bytes = 0
        else:
            keys = [k for k in self._data if k.startswith(prefix)]
            for k in keys:
                self._remove(k)
            removed = len(keys)
        self.counters.invalidations += removed
        if notify and self.on_invalidate is not None:
            self.on_invalidate(prefix)
        return removed

    def sweep(self, limit: int = 10_000) -> int:
        """Drop up to `limit` expired entries; returns how many were dropped."""
        now = self.clock()
        expired = []
        for k, (expires, _, _) in self._data.items():
            if expires <= now:
                expired.append(k)
                if len(expired) >= limit:
                    break
        for k in expired:
            self._remove(k)
        self.counters.expirations += len(expired)
        return len(expired)

    def reconfigure(self, *, max_entries: int, ttl: float) -> int:
        """Apply a new capacity (evicting LRU entries at once) and default TTL (for new entries)."""
        self.max_entries = max_entries
        self.ttl = ttl
        return self._evict()

    def _remove(self, key: str) -> None:
        _, _, size = self._data.pop(key)
        self.bytes -= size

    def _evict(self) -> int:
        evicted = 0
        while self._data and (len(self._data) > self.max_entries or self.bytes > self.max_bytes):
            _, (_, _, size) = self._data.popitem(last=False)
            self.bytes -= size
            evicted += 1
        self.counters.evictions += evicted
        return evicted
