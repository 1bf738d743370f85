"""The client's L1 (perfpilot_client.nearcache) on its own: when it may serve, the fill guard,
events, resyncs, the keepalive bound and the counters it reports. Time is a fake clock."""

from __future__ import annotations

import time

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client.nearcache import ENTRY_OVERHEAD_BYTES, NearCache
from perfpilot_contract.liveconfig import L1, Cache
from perfpilot_contract.tiercache import NO_DEPS, Deps


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def live(clock: Clock, **l1: object) -> NearCache:
    nc = NearCache(clock=clock, grace=3.0)
    nc.configure(Cache(l1=L1(**{"enabled": True, **l1})))  # type: ignore[arg-type]
    nc.subscribed()
    return nc


def changed(seq: int, *, keys: tuple[str, ...] = (), prefixes: tuple[str, ...] = (), tags: tuple[str, ...] = (),
            truncated: bool = False, dropped: int = 0) -> pb.EventBatch:
    return pb.EventBatch(dropped=dropped, events=[pb.Event(
        sequence=seq, type=pb.EVENT_TYPE_CACHE_CHANGED, time_unix_nano=time.time_ns(),
        cache=pb.CacheChange(keys=keys, prefixes=prefixes, tags=tags, truncated=truncated))])


def fill(nc: NearCache, key: str, value: bytes = b"v", *, seq: int = 0, deps: Deps = NO_DEPS,
         ticket: tuple[int, int] | None = None, ttl: float | None = None) -> bool:
    return nc.fill(key, value, ttl_left=ttl, deps=deps, sequence=seq, ticket=ticket or nc.ticket())


def test_off_by_default_and_until_subscribed() -> None:
    clock = Clock()
    nc = NearCache(clock=clock)
    assert not fill(nc, "k") and nc.get("k") is None
    nc.configure(Cache(l1=L1(enabled=True)))
    assert not fill(nc, "k") and nc.get("k") is None  # enabled, but no live stream yet
    nc.subscribed()
    assert fill(nc, "k") and nc.get("k") == b"v"
    assert (nc.hits, nc.misses) == (1, 2)


def test_events_drop_keys_prefixes_tags_and_dependents() -> None:
    nc = live(Clock())
    for k in ("user/1", "user/2", "item/1"):
        fill(nc, k)
    fill(nc, "page", deps=Deps(keys=("item/1",)))
    fill(nc, "tagged", deps=Deps(tags=("t",)))
    nc.on_batch(changed(1, keys=("item/1",)))
    assert nc.get("item/1") is None and nc.get("page") is None and nc.get("user/1") == b"v"
    nc.on_batch(changed(2, prefixes=("user/",)))
    assert nc.get("user/2") is None
    nc.on_batch(changed(3, tags=("t",)))
    assert len(nc) == 0 and nc.invalidations == 5 and nc.events == 3 and len(nc.staleness) == 3


def test_truncated_change_or_lost_events_clear_everything() -> None:
    nc = live(Clock())
    fill(nc, "a")
    nc.on_batch(changed(1, truncated=True))
    assert len(nc) == 0
    fill(nc, "b", seq=1)
    nc.on_batch(pb.EventBatch(dropped=4))
    assert len(nc) == 0 and nc.resyncs == 1


def test_a_fill_older_than_an_applied_event_is_skipped() -> None:
    nc = live(Clock())
    ticket = nc.ticket()                             # a read starts; the sidecar answers as of seq 5
    nc.on_batch(changed(6, keys=("k",)))             # ...but event 6 (about k) is applied first
    assert not fill(nc, "k", b"old", seq=5, ticket=ticket) and nc.get("k") is None
    assert fill(nc, "k", b"new", seq=6)              # a read as of 6 already reflects it


def test_stream_loss_stops_serving_and_resyncs() -> None:
    clock = Clock()
    nc = live(clock)
    ticket = nc.ticket()
    fill(nc, "k")
    nc.lost()
    assert nc.get("k") is None and not nc.serving() and nc.resyncs == 1
    nc.subscribed()
    assert nc.get("k") is None                        # cleared: nothing from before the gap
    assert not fill(nc, "k", ticket=ticket)           # a read started before the gap fills nothing
    assert fill(nc, "k")


def test_silent_stream_stops_serving_within_the_grace_period() -> None:
    clock = Clock()
    nc = live(clock)
    fill(nc, "k")
    clock.now += 2.9
    assert nc.get("k") == b"v"
    clock.now += 0.2                                  # no batch (not even a keepalive) for 3.1 s
    assert nc.get("k") is None and not nc.serving()
    nc.on_batch(pb.EventBatch())                      # the keepalive arrives: nothing was lost
    assert nc.get("k") == b"v"


def test_bounds_ttl_and_value_size() -> None:
    clock = Clock()
    nc = live(clock, max_entries=3, max_bytes=10_000, ttl=5.0, max_value_bytes=100)
    assert not fill(nc, "big", b"x" * 101)            # over maxValueBytes: L2 only
    for i in range(5):
        fill(nc, f"k{i}")
    assert len(nc) == 3 and nc.evictions == 2
    fill(nc, "short", ttl=1.0)                        # never longer than its time left in L2
    clock.now += 1.0
    nc.on_batch(pb.EventBatch())
    assert nc.get("short") is None and nc.get("k4") == b"v"
    clock.now += 4.0
    nc.on_batch(pb.EventBatch())
    assert nc.get("k4") is None                        # cache.l1.ttl
    nc.configure(Cache(l1=L1(enabled=True, max_bytes=2 * (2 + 1 + ENTRY_OVERHEAD_BYTES))))
    nc.subscribed()
    for i in range(3):
        fill(nc, f"k{i}")
    assert len(nc) == 2 and nc.size_bytes <= 2 * (2 + 1 + ENTRY_OVERHEAD_BYTES)


def test_any_change_of_the_cache_config_clears_l1() -> None:
    nc = live(Clock())
    fill(nc, "k")
    nc.configure(Cache(l1=L1(enabled=True)))          # the same: kept
    assert nc.get("k") == b"v"
    nc.configure(Cache(ttl=1.0, l1=L1(enabled=True)))  # the operator changed cache.ttl
    nc.subscribed()
    assert nc.get("k") is None


def test_stats_are_deltas() -> None:
    nc = live(Clock())
    fill(nc, "k")
    nc.get("k")
    nc.get("x")
    nc.on_batch(changed(1, keys=("k",)))
    first = nc.take_stats()
    assert first is not None and (first.hits, first.misses, first.invalidations, first.events) == (1, 1, 1, 1)
    assert len(first.staleness_seconds) == 1 and 0 <= first.staleness_seconds[0] < 60
    assert nc.take_stats() is None
    nc.get("k")
    second = nc.take_stats()
    assert second is not None and (second.hits, second.misses) == (0, 1)
