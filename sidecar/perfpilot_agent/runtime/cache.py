"""The sidecar's cache (L2): the contract's TTL + LRU + dependency cache, used from the event loop.

The same class is the client's L1 (perfpilot_contract.tiercache), so both tiers drop the same
entries for one invalidation. Every write and invalidation -- a key, a prefix, a tag, or a
dependency cascade -- reaches the listeners registered with `cache.subscribe(listener)`: the agent
publishes each one as an EVENT_TYPE_CACHE_CHANGED event (`change_message`) so every client drops
it from its L1; a shared tier (Redis) subscribes the same way to propagate invalidations (and
passes `origin=` to write()/drop() when it applies a remote one, to recognise its own echo).
"""

from __future__ import annotations

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.tiercache import CacheCounters, Change, Deps, Hit, Listener, TTLCache

__all__ = ["KERNEL_KEY_PREFIX", "CacheCounters", "Change", "Deps", "Hit", "Listener", "TTLCache", "change_message"]
KERNEL_KEY_PREFIX = "kernel/"
"""Keys of kernel results (RunKernel use_cache); CachePut refuses them."""


def change_message(change: Change) -> pb.CacheChange | None:
    """What the clients' L1s must drop for `change`; None when no L1 can hold any of it (a kernel
    result written, nothing depending on it: L1 never holds kernel results)."""
    if (change.kind == "put" and not change.dependents and not change.truncated
            and all(k.startswith(KERNEL_KEY_PREFIX) for k in change.keys)):
        return None
    return pb.CacheChange(keys=[*change.keys, *change.dependents], prefixes=change.prefixes, tags=change.tags,
                          truncated=change.truncated)
