"""L1: the client's in-process near-cache in front of the sidecar's cache (L2).

A read answered here costs a dictionary lookup instead of a gRPC round trip. Coherence comes from
the sidecar's event stream: every write or invalidation in L2, by any process, is published as a
CACHE_CHANGED event naming keys, prefixes and tags, and this cache drops the same entries (the
same TTLCache code as L2, perfpilot_contract.tiercache, so dependents go too). Guarantees:

- Staleness is bounded by one event delivery: a value changed in L2 is served here only until the
  event announcing it is applied (measured per event: `staleness`).
- L1 serves only while the stream is live: subscribed, synced, and a batch (events or the
  sidecar's keepalive) seen within `grace` seconds. When the stream breaks, the sidecar reports
  lost events, or the config changes, L1 is cleared (a resync) and fills again from L2.
- A write by this client keeps its own value: the event of that write (sequence <= the entry's)
  does not drop it; any later event does.
- A fill from an L2 read is skipped when an event newer than the read was already applied (it
  might concern the key), so a slow read can never re-insert a value an event just dropped.
- Bounded in entries and bytes (LRU), entries live at most `cache.l1.ttl` and never longer than
  their time left in L2; values over `cache.l1.maxValueBytes` stay in L2 only.

Thread-safe (one lock): the sync client's app threads read while its watcher thread applies events.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.limits import MAX_STALENESS_SAMPLES
from perfpilot_contract.liveconfig import L1, Cache
from perfpilot_contract.tiercache import NO_DEPS, Deps, TTLCache

KEEPALIVE_SECONDS = 1.0
"""How often the sidecar sends an empty batch on a quiet stream (WatchEventsRequest.keepalive)."""
GRACE_SECONDS = 3.0
"""L1 stops serving when no batch arrived for this long (three keepalives)."""
ENTRY_OVERHEAD_BYTES = 64
"""Counted per entry on top of key and value bytes, so maxBytes also bounds many tiny entries."""


def deps_from_proto(msg: pb.CacheDependencies) -> Deps:
    """The wire form of an entry's dependencies as the cache's."""
    if not (msg.keys or msg.prefixes or msg.tags):
        return NO_DEPS
    return Deps(tuple(msg.keys), tuple(msg.prefixes), tuple(msg.tags))


class NearCache:
    """The L1 of one client: off until the live config enables it and the event stream is live."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, grace: float = GRACE_SECONDS,
                 allowed: bool = True) -> None:
        self.clock = clock
        self.allowed = allowed  # False: this client never keeps an L1, whatever the profile says
        self.grace = grace
        self.settings = L1()
        self._cache_cfg: Cache | None = None
        self._lock = threading.Lock()
        self._cache = TTLCache(max_entries=0, ttl=0.0, max_bytes=0, clock=clock)
        self._live = False
        self._alive_until = 0.0
        self.epoch = 0          # bumped by every resync: fills from reads started before are skipped
        self.applied = 0        # highest event sequence applied since the last resync
        self.hits = self.misses = self.invalidations = self.events = self.resyncs = 0
        self.staleness: deque[float] = deque(maxlen=MAX_STALENESS_SAMPLES)
        self._sent = (0, 0, 0, 0, 0, 0, 0)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def size_bytes(self) -> int:
        """Bytes held (keys, values and the per-entry overhead)."""
        return self._cache.bytes

    @property
    def evictions(self) -> int:
        """Entries evicted because L1 was full."""
        return self._cache.counters.evictions

    def serving(self) -> bool:
        """Enabled, subscribed and heard from within `grace` seconds."""
        return self.allowed and self.settings.enabled and self._live and self.clock() < self._alive_until

    # -- the app's reads and writes ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The value when L1 may answer, else None (then read L2 and `fill`)."""
        if not self.serving():
            self.misses += 1
            return None
        with self._lock:
            hit = self._cache.lookup(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        value: bytes = hit.value[0]
        return value

    def ticket(self) -> tuple[int, int]:
        """Taken before an L2 call: (epoch, applied); `fill` skips when either moved past the reply."""
        return self.epoch, self.applied

    def fill(self, key: str, value: bytes, *, ttl_left: float | None, deps: Deps, sequence: int,
             ticket: tuple[int, int]) -> bool:
        """Store what L2 answered (a read, or this client's write) as of event `sequence`.

        Skipped when L1 is not serving, the value is over maxValueBytes, the stream resynced since
        `ticket`, or an event newer than `sequence` was already applied (it may concern this key:
        its drop happened before this insert, so the insert must not happen)."""
        s = self.settings
        with self._lock:
            if (not self.serving() or len(value) > s.max_value_bytes or ticket[0] != self.epoch
                    or self.applied > sequence):
                self._cache.drop(keys=(key,))
                return False
            ttl = s.ttl if ttl_left is None else min(s.ttl, ttl_left)
            self._cache.write(key, (value, sequence), ttl=ttl, size=len(key) + len(value) + ENTRY_OVERHEAD_BYTES,
                              deps=deps)
            return key in self._cache

    def discard(self, *, prefixes: Iterable[str] = (), keys: Iterable[str] = (), tags: Iterable[str] = ()) -> int:
        """Drop entries now (this client's own invalidation; the event will repeat it)."""
        with self._lock:
            return self._cache.drop(prefixes=prefixes, keys=keys, tags=tags).removed

    # -- the event stream ----------------------------------------------------------------------------

    def configure(self, cache: Cache) -> None:
        """Apply the live config's cache section; any change of it clears L1 (a TTL or size change
        pushed by the operator must not leave entries older than the new rules)."""
        with self._lock:
            if cache == self._cache_cfg:
                return
            self._cache_cfg, self.settings = cache, cache.l1
            l1 = cache.l1
            self._cache.reconfigure(max_entries=l1.max_entries if l1.enabled else 0, ttl=l1.ttl,
                                    max_bytes=l1.max_bytes if l1.enabled else 0)
            self._resync_locked(count=False)

    def wanted(self) -> bool:
        """Whether the client's stream should carry CACHE_CHANGED events (L1 allowed and enabled)."""
        return self.allowed and self.settings.enabled

    def subscribed(self, *, cache_events: bool = True) -> None:
        """A new stream delivered its first batch and the config was re-read: start clean (and
        serve only when that stream carries the cache events)."""
        with self._lock:
            self._resync_locked(count=False)
            self._live = cache_events
            self._alive_until = self.clock() + self.grace

    def lost(self, *, count: bool = True) -> None:
        """The stream broke (or is being replaced): stop serving and forget everything (it may
        have missed events)."""
        with self._lock:
            was_live = self._live
            self._live = False
            self._resync_locked(count=count and was_live)

    def on_batch(self, batch: pb.EventBatch) -> None:
        """Apply one stream batch: events lost on the way force a resync; CACHE_CHANGED events drop
        entries; every batch (even an empty keepalive) proves the stream alive."""
        now_ns = time.time_ns()
        with self._lock:
            if batch.dropped:
                self._resync_locked(count=True)
            for ev in batch.events:
                if ev.type == pb.EVENT_TYPE_CACHE_CHANGED:
                    c = ev.cache
                    if c.truncated or "" in c.prefixes:
                        self.invalidations += self._cache.clear()
                    else:  # a key filled as of this event or later already holds the change (our own write)
                        keys = [k for k in c.keys if (self._cache.peek(k) or (b"", 0))[1] < ev.sequence]
                        self.invalidations += self._cache.drop(prefixes=c.prefixes, keys=keys, tags=c.tags).removed
                    self.events += 1
                    self.staleness.append(max(0, now_ns - ev.time_unix_nano) / 1e9)
                self.applied = max(self.applied, ev.sequence)
            self._alive_until = self.clock() + self.grace

    def _resync_locked(self, *, count: bool) -> None:
        self._cache.clear()
        self.epoch += 1
        self.applied = 0
        self.resyncs += int(count)

    # -- stats ---------------------------------------------------------------------------------------

    def take_stats(self) -> pb.ClientCacheStats | None:
        """Counters since the previous call (None when nothing happened), for RecordTimings."""
        now = (self.hits, self.misses, self.evictions, self.invalidations, self.events, self.resyncs, 0)
        staleness = []
        while self.staleness:
            staleness.append(self.staleness.popleft())
        if now == self._sent and not staleness:
            return None
        d = [a - b for a, b in zip(now, self._sent)]
        self._sent = now
        return pb.ClientCacheStats(hits=d[0], misses=d[1], evictions=d[2], invalidations=d[3], events=d[4],
                                   resyncs=d[5], staleness_seconds=staleness)
