"""The sidecar's side of the shared tier: which tier is in force, and how it meets the local cache.

Configure replaces the tier as a unit when its connection settings (url, keyPrefix, username)
change and adjusts timeout / maxPendingWrites in place; unset, the tier is closed. The local cache
reports its invalidations through its on_invalidate hook; invalidations from other replicas are
applied here with notify=False (so they are not sent back) and announced as CACHE_CLEARED events,
the same event a local CacheInvalidate publishes, so the apps' L1 caches drop them too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.runtime.cache import TTLCache
from perfpilot_agent.runtime.events import EventBus
from perfpilot_agent.runtime.sharedcache import SharedTier, SharedView, default_prefix
from perfpilot_contract.sharedcache import SharedCache


class SharedSlot:
    """The tier in force (None while cache.shared is unset)."""

    def __init__(self, cache: TTLCache, events: EventBus, *, profile: str = "", password: str | None = None,
                 client_name: str = "perfpilot-sidecar") -> None:
        self.cache = cache
        self.events = events
        self.profile = profile
        self.password = password
        self.client_name = client_name
        self.tier: SharedTier | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        cache.on_invalidate = self._local_invalidation

    def apply(self, cfg: SharedCache | None) -> None:
        """Follow the live config (call on the event loop)."""
        tier = self.tier
        if tier is not None and cfg is not None and _same_connection(tier.cfg, cfg):
            tier.cfg = cfg  # timeout and maxPendingWrites apply to the next call
            return
        if tier is not None:
            self.tier = None
            task = asyncio.get_running_loop().create_task(tier.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if cfg is not None:
            self.tier = SharedTier(cfg, prefix=cfg.key_prefix or default_prefix(self.profile), password=self.password,
                                   apply_remote=self._remote_invalidation, resync=self._resync,
                                   client_name=self.client_name)
            self.tier.start()

    async def close(self) -> None:
        """Close the tier in force and any still closing."""
        if self.tier is not None:
            await self.tier.close()
            self.tier = None
        await asyncio.gather(*self._closing, return_exceptions=True)

    def view(self) -> SharedView:
        """For the snapshot: unconfigured, or the tier's state and counters."""
        return self.tier.view() if self.tier is not None else SharedView()

    async def read_through(self, key: str) -> tuple[bytes, float] | None:
        """After a local miss: the shared tier's value and seconds left (filling the local cache), or None."""
        tier = self.tier
        if tier is None:
            return None
        token = tier.read_token()
        got = await tier.get(key)
        if got is None:
            return None
        value, ttl = got
        ttl = self.cache.ttl if ttl is None else ttl
        if tier.may_fill(key, token) and key not in self.cache:  # nothing newer arrived meanwhile
            self.cache.put(key, value, ttl=ttl, size=len(value) + len(key))
        return value, ttl

    def write_through(self, key: str, value: bytes, ttl: float | None) -> None:
        """After a local put: the same value with the same TTL (not stored locally: deleted there too)."""
        if self.tier is not None:
            effective = self.cache.ttl if ttl is None else ttl
            self.tier.put(key, value, effective if self.cache.max_entries > 0 else 0.0)

    def _local_invalidation(self, prefix: str) -> None:
        if self.tier is not None:
            self.tier.invalidate(prefix)

    def _remote_invalidation(self, kind: str, target: str) -> None:
        if kind == "key":
            removed = int(self.cache.discard(target))
            # a truncated key/prefix is a shorter prefix: an L1 drops a superset, never too little
            attrs = {"prefix": target[:128], "key": target[:128], "removed": str(removed), "origin": "shared"}
        else:
            removed = self.cache.invalidate(target, notify=False)
            attrs = {"prefix": target[:128], "removed": str(removed), "origin": "shared"}
        self.events.publish(pb.EVENT_TYPE_CACHE_CLEARED, f"{removed} cache entries invalidated by another replica",
                            attrs)

    def _resync(self) -> int:
        removed = self.cache.invalidate("", notify=False)
        self.events.publish(pb.EVENT_TYPE_CACHE_CLEARED,
                            f"{removed} cache entries dropped: the shared tier (re)connected and may have "
                            "missed other replicas' invalidations", {"prefix": "", "removed": str(removed),
                                                                     "origin": "shared-resync"})
        return removed


def _same_connection(a: SharedCache, b: SharedCache) -> bool:
    return replace(a, timeout=b.timeout, max_pending_writes=b.max_pending_writes) == b
