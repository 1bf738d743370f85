"""The TTL + LRU + dependency cache both cache tiers are made of: the sidecar's (L2) and the
client's in-process near-cache (L1).

One implementation on purpose: a CACHE_CHANGED event names keys, prefixes and tags, and each L1
must drop exactly what the sidecar dropped, dependents included, so both sides run the same
matching code. An OrderedDict gives O(1) get/put/LRU eviction; the cache is bounded by entries and
by bytes; expired entries go lazily on read and by `sweep()` (no timer per entry); the clock is
injectable so tests step time. Not thread-safe: the sidecar uses it from its event loop, the
client behind a lock. Pure standard library (the contract package's rule).

Dependencies: an entry may depend on keys (it goes when one of them is written, invalidated or
dropped), on prefixes (when a key under one changes, or an overlapping prefix is invalidated) and
carry tags (it goes when a tag is invalidated). Drops cascade: a dropped entry's own dependents
go too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from perfpilot_contract.limits import MAX_CHANGE_KEYS


@dataclass(frozen=True)
class Deps:
    """What an entry depends on (CacheDependencies on the wire)."""

    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys or self.prefixes or self.tags)


NO_DEPS = Deps()


@dataclass
class CacheCounters:
    """Cumulative counters (exported as Prometheus counters and in GetStats)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    dependency_invalidations: int = 0


@dataclass(frozen=True)
class Change:
    """One write or invalidation, as the listeners (events, a shared tier) see it.

    `keys`, `prefixes` and `tags` are what the caller named (the written key for a put);
    `dependents` are the keys dropped because they depended on something that changed (at most
    MAX_CHANGE_KEYS listed; `truncated` when there were more). `origin` says who asked
    ("local" for the sidecar's own callers; a shared tier applying a remote invalidation passes its
    own name so its listener can skip what it sent)."""

    kind: Literal["put", "invalidate"]
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    dependents: tuple[str, ...] = ()
    truncated: bool = False
    removed: int = 0
    """Entries removed: named ones and dependents (a put's replaced entry not counted)."""
    evicted: int = 0
    origin: str = "local"


class Hit(NamedTuple):
    """A live entry: its value, seconds left and dependencies."""

    value: Any
    ttl_left: float
    deps: Deps


Listener = Callable[[Change], None]


class TTLCache:
    """Bounded by entry count and by total bytes; each entry has its own expiry and dependencies."""

    def __init__(self, *, max_entries: int, ttl: float, max_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self.counters = CacheCounters()
        self.bytes = 0
        self.listeners: list[Listener] = []
        self._data: OrderedDict[str, tuple[float, Any, int, Deps]] = OrderedDict()
        self._on_key: dict[str, set[str]] = {}      # dependency key -> dependent keys
        self._on_prefix: dict[str, set[str]] = {}   # dependency prefix -> dependent keys
        self._on_tag: dict[str, set[str]] = {}      # tag -> tagged keys

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(change)` after every write and invalidation (the hook a shared tier or the
        event stream hangs on); it runs synchronously, so it must be quick and must not raise."""
        self.listeners.append(listener)

    # -- reads -------------------------------------------------------------------------------------

    def lookup(self, key: str) -> Hit | None:
        """The live entry, else None; a hit makes the entry most recent."""
        item = self._data.get(key)
        if item is None:
            self.counters.misses += 1
            return None
        expires, value, _, deps = item
        now = self.clock()
        if expires <= now:
            self._remove(key)
            self.counters.expirations += 1
            self.counters.misses += 1
            return None
        self._data.move_to_end(key)
        self.counters.hits += 1
        return Hit(value, expires - now, deps)

    def peek(self, key: str) -> Any:
        """The value stored under `key` (expired or not), else None; no counters, no LRU move."""
        item = self._data.get(key)
        return None if item is None else item[1]

    def get(self, key: str) -> tuple[Any, float] | None:
        """(value, seconds left) for a live entry, else None."""
        hit = self.lookup(key)
        return None if hit is None else (hit.value, hit.ttl_left)

    # -- writes ------------------------------------------------------------------------------------

    def write(self, key: str, value: Any, *, ttl: float | None = None, size: int = 0, deps: Deps = NO_DEPS,
              origin: str = "local") -> Change:
        """Insert or replace, dropping the key's dependents; evicts LRU entries to make room.

        A TTL of 0 (cache.ttl: 0s, or the call's own) or maxEntries 0 means "not cached": the value
        is not stored (an older value under the key is dropped, so a read never sees stale data)."""
        if key in self._data:
            self._remove(key)
        dependents = self._cascade([key])
        ttl = self.ttl if ttl is None else ttl
        evicted = 0
        if ttl > 0 and self.max_entries > 0:
            self._data[key] = (self.clock() + ttl, value, size, deps)
            self.bytes += size
            self._index(key, deps)
            evicted = self._evict()
        return self._notify(Change("put", keys=(key,), dependents=_listed(dependents),
                                   truncated=len(dependents) > MAX_CHANGE_KEYS, removed=len(dependents),
                                   evicted=evicted, origin=origin))

    def put(self, key: str, value: Any, *, ttl: float | None = None, size: int = 0, deps: Deps = NO_DEPS) -> int:
        """write() returning how many LRU entries were evicted to make room."""
        return self.write(key, value, ttl=ttl, size=size, deps=deps).evicted

    def drop(self, *, prefixes: Iterable[str] = (), keys: Iterable[str] = (), tags: Iterable[str] = (),
             origin: str = "local") -> Change:
        """Remove entries under `prefixes` ("" = all), the exact `keys`, those tagged with `tags`,
        and everything depending on what went."""
        prefixes, keys, tags = tuple(prefixes), tuple(keys), tuple(tags)
        named: set[str] = set()
        if "" in prefixes:
            named.update(self._data)
        elif prefixes:
            named.update(k for k in self._data if k.startswith(prefixes))
        named.update(k for k in keys if k in self._data)
        for tag in tags:
            named.update(self._on_tag.get(tag, ()))
        for k in named:
            self._remove(k)
        self.counters.invalidations += len(named)
        changed = [*named, *(k for k in keys if k not in named)]
        dependents = self._cascade(changed, prefixes)
        return self._notify(Change("invalidate", keys=keys, prefixes=prefixes, tags=tags,
                                   dependents=_listed(dependents), truncated=len(dependents) > MAX_CHANGE_KEYS,
                                   removed=len(named) + len(dependents), origin=origin))

    def invalidate(self, prefix: str) -> int:
        """Remove every entry whose key starts with `prefix` ("" removes all), dependents too."""
        return self.drop(prefixes=(prefix,)).removed

    def clear(self) -> int:
        """Remove everything without notifying (an L1 resync); returns how many went."""
        n = len(self._data)
        self._data.clear()
        self._on_key.clear()
        self._on_prefix.clear()
        self._on_tag.clear()
        self.bytes = 0
        return n

    def sweep(self, limit: int = 10_000) -> int:
        """Drop up to `limit` expired entries; returns how many were dropped."""
        now = self.clock()
        expired = []
        for k, item in self._data.items():
            if item[0] <= now:
                expired.append(k)
                if len(expired) >= limit:
                    break
        for k in expired:
            self._remove(k)
        self.counters.expirations += len(expired)
        return len(expired)

    def reconfigure(self, *, max_entries: int, ttl: float, max_bytes: int | None = None) -> int:
        """Apply a new capacity (evicting LRU entries at once) and default TTL (for new entries)."""
        self.max_entries = max_entries
        self.ttl = ttl
        if max_bytes is not None:
            self.max_bytes = max_bytes
        return self._evict()

    # -- internals ---------------------------------------------------------------------------------

    def _notify(self, change: Change) -> Change:
        for listener in self.listeners:
            listener(change)
        return change

    def _index(self, key: str, deps: Deps) -> None:
        for index, names in ((self._on_key, deps.keys), (self._on_prefix, deps.prefixes), (self._on_tag, deps.tags)):
            for name in names:
                index.setdefault(name, set()).add(key)

    def _unindex(self, key: str, deps: Deps) -> None:
        for index, names in ((self._on_key, deps.keys), (self._on_prefix, deps.prefixes), (self._on_tag, deps.tags)):
            for name in names:
                dependents = index.get(name)
                if dependents is not None:
                    dependents.discard(key)
                    if not dependents:
                        del index[name]

    def _dependents(self, key: str) -> set[str]:
        """Keys depending on `key` directly (by key, or by a prefix of it)."""
        out = set(self._on_key.get(key, ()))
        if self._on_prefix:
            if len(self._on_prefix) <= len(key):
                for prefix, keys in self._on_prefix.items():
                    if key.startswith(prefix):
                        out.update(keys)
            else:
                for i in range(len(key) + 1):
                    out.update(self._on_prefix.get(key[:i], ()))
        return out

    def _cascade(self, changed: Iterable[str], prefixes: tuple[str, ...] = ()) -> list[str]:
        """Remove the dependents of the `changed` keys and of the invalidated `prefixes`, transitively."""
        frontier = list(changed)
        dropped: list[str] = []

        def take(key: str) -> None:
            if key in self._data:
                self._remove(key)
                dropped.append(key)
                frontier.append(key)

        if prefixes:  # dependents of keys under the prefixes (cached or not), and of overlapping prefixes
            every = "" in prefixes
            for dep_key in [k for k in self._on_key if every or k.startswith(prefixes)]:
                for k in list(self._on_key.get(dep_key, ())):
                    take(k)
            for dep_prefix in [q for q in self._on_prefix
                               if every or q.startswith(prefixes) or any(p.startswith(q) for p in prefixes)]:
                for k in list(self._on_prefix.get(dep_prefix, ())):
                    take(k)
        seen: set[str] = set()
        while frontier:
            key = frontier.pop()
            if key not in seen:
                seen.add(key)
                for dep in self._dependents(key):
                    take(dep)
        self.counters.dependency_invalidations += len(dropped)
        return dropped

    def _remove(self, key: str) -> None:
        _, _, size, deps = self._data.pop(key)
        self.bytes -= size
        if deps:
            self._unindex(key, deps)

    def _evict(self) -> int:
        evicted = 0
        while self._data and (len(self._data) > self.max_entries or self.bytes > self.max_bytes):
            key = next(iter(self._data))
            self._remove(key)
            evicted += 1
        self.counters.evictions += evicted
        return evicted


def _listed(keys: list[str]) -> tuple[str, ...]:
    return tuple(keys[:MAX_CHANGE_KEYS])
