"""The sidecar's side of the shared tier: which tier is in force, and how it meets the local cache.

Configure replaces the tier as a unit when its connection settings (url, keyPrefix, username)
change and adjusts timeout / maxPendingWrites in place; unset, the tier is closed. The local cache
reports every write and invalidation to its listeners (cache.subscribe): local invalidations go to
the tier; invalidations from other replicas are applied with origin=ORIGIN, so the listener skips
them (no echo) while the agent's own listener still turns them into the CACHE_CHANGED events the
apps' L1 caches follow. Values written with dependencies stay local (see runtime/sharedcache.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from perfpilot_agent.runtime.cache import Change, TTLCache
from perfpilot_agent.runtime.sharedstats import SharedView
from perfpilot_contract.sharedcache import SharedCache

if TYPE_CHECKING:
    from perfpilot_agent.runtime.sharedcache import SharedTier

ORIGIN = "shared"
"""Change.origin of what this module applies to the local cache (fills, remote invalidations, resyncs)."""


class SharedSlot:
    """The tier in force (None while cache.shared is unset)."""

    def __init__(self, cache: TTLCache, *, profile: str = "", password: str | None = None, ca: str | None = None,
                 client_name: str = "perfpilot-sidecar") -> None:
        self.cache = cache
        self.profile = profile
        self.password = password
        self.ca = ca
        self.client_name = client_name
        self.tier: SharedTier | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        cache.subscribe(self._local_change)

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
            from perfpilot_agent.runtime.sharedcache import SharedTier, default_prefix  # redis-py: only when used

            self.tier = SharedTier(cfg, prefix=cfg.key_prefix or default_prefix(self.profile), password=self.password, ca=self.ca,
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
        if not tier.may_fill(key, token):  # invalidated while the read was in flight: maybe stale
            return None
        if key not in self.cache:  # a local write meanwhile wins
            self.cache.write(key, value, ttl=ttl, size=len(value) + len(key), origin=ORIGIN)
        return value, ttl

    def write_through(self, key: str, value: bytes, ttl: float | None, *, shareable: bool = True) -> None:
        """After a local put: the same value with the same TTL. Not stored locally (ttl 0, cache off)
        or not shareable (it has dependencies): deleted in Redis and in the other replicas instead."""
        if self.tier is not None:
            effective = self.cache.ttl if ttl is None else ttl
            self.tier.put(key, value, effective if shareable and self.cache.max_entries > 0 else 0.0)

    def _local_change(self, change: Change) -> None:
        if self.tier is not None and change.origin != ORIGIN and change.kind == "invalidate":
            self.tier.invalidate(change.keys, change.prefixes, change.tags)

    def _remote_invalidation(self, kind: str, target: str) -> None:
        if kind == "key":
            self.cache.drop(keys=(target,), origin=ORIGIN)
        elif kind == "tag":
            self.cache.drop(tags=(target,), origin=ORIGIN)
        else:
            self.cache.drop(prefixes=(target,), origin=ORIGIN)

    def _resync(self) -> int:
        """Everything local may have missed an invalidation: drop it all (the L1s are told)."""
        return self.cache.drop(prefixes=("",), origin=ORIGIN).removed


def _same_connection(a: SharedCache, b: SharedCache) -> bool:
    return replace(a, timeout=b.timeout, max_pending_writes=b.max_pending_writes) == b
