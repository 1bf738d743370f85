"""The shared tier's bookkeeping without a server: bounds, the journal, the message format, the
fill guard. (Everything that talks to Redis is in test_shared_tier.py, against a real one.)"""

from __future__ import annotations

from typing import Any

import pytest

from perfpilot_agent.runtime import sharedcache as sc
from perfpilot_agent.runtime.cache import TTLCache
from perfpilot_agent.runtime.sharedslot import ORIGIN, SharedSlot, _same_connection
from perfpilot_contract.sharedcache import SharedCache


def tier(**cfg: Any) -> tuple[sc.SharedTier, list[tuple[str, str]]]:
    applied: list[tuple[str, str]] = []
    t = sc.SharedTier(SharedCache(url="redis://127.0.0.1:1/0", **cfg), prefix="p:", password=None,
                      apply_remote=lambda kind, target: applied.append((kind, target)), resync=lambda: 0)
    return t, applied


async def test_a_down_tier_journals_instead_of_queueing_and_counts_dropped_writes() -> None:
    t, _ = tier()
    t.put("k", b"v", 10.0)
    t.put("gone", b"", 0.0)  # ttl 0: a delete
    t.invalidate(keys=["x"], prefixes=["user/"], tags=["team"])
    assert not t._ops and t.counters.writes_dropped == 1
    assert t._journal == {("k", "k"), ("k", "gone"), ("k", "x"), ("p", "user/"), ("t", "team")}
    assert t.view().pending == 5 and not t.view().up and t.view().down_since_unix_nano > 0


async def test_the_journal_is_bounded_then_means_everything() -> None:
    t, _ = tier()
    for i in range(sc.JOURNAL_MAX + 5):
        t.put(f"k{i}", b"v", 1.0)
    assert t._journal_all and not t._journal and t.view().pending == 1
    t2, _ = tier()
    t2.invalidate(prefixes=[""])  # invalidating everything: no need to remember anything else
    t2.put("k", b"v", 1.0)
    assert t2._journal_all and not t2._journal


async def test_the_queue_is_bounded_by_max_pending_writes() -> None:
    t, _ = tier(max_pending_writes=2)
    t.up = True  # as if connected; the writer is not running, so nothing drains
    for i in range(5):
        t.put(f"k{i}", b"v", 1.0)
    assert len(t._ops) == 2 and t.counters.writes_dropped == 3
    assert t._journal == {("k", "k2"), ("k", "k3"), ("k", "k4")}  # invalidated everywhere later


async def test_messages_from_others_are_applied_own_and_malformed_ones_are_not() -> None:
    t, applied = tier()
    other = b"0123456789abcdef"
    t.on_message(other + b"kuser/1")
    t.on_message(other + b"puser/")
    t.on_message(other + b"tteam-a")
    t.on_message(t.origin + b"kmine")  # our own echo
    for bad in (b"short", other + b"zwhat", other + b"k\xff\xfe", "not bytes", None):
        t.on_message(bad)
    assert applied == [("key", "user/1"), ("prefix", "user/"), ("tag", "team-a")]
    assert t.counters.invalidations_received == 3 and t.counters.errors == 2


async def test_a_read_that_raced_an_invalidation_does_not_fill() -> None:
    t, _ = tier()
    token = t.read_token()
    assert t.may_fill("a", token)
    t.on_message(b"0123456789abcdef" + b"ka")
    assert not t.may_fill("a", token) and t.may_fill("b", token)
    token = t.read_token()
    t.on_message(b"0123456789abcdef" + b"pany/")
    assert not t.may_fill("b", token)
    assert t.may_fill("b", t.read_token())


def test_glob_characters_are_escaped_for_scan() -> None:
    assert "a*b?[c]\\".translate(sc._GLOB) == "a\\*b\\?\\[c\\]\\\\"


def test_default_prefix_and_connection_identity() -> None:
    assert sc.default_prefix("ai/agents") == "perfpilot:ai/agents:"
    base = SharedCache(url="redis://r:6379/0")
    assert _same_connection(base, SharedCache(url="redis://r:6379/0", timeout=1.0, max_pending_writes=5))
    assert not _same_connection(base, SharedCache(url="redis://r:6379/1"))
    assert not _same_connection(base, SharedCache(url="redis://r:6379/0", key_prefix="x:"))


@pytest.mark.parametrize("shareable, ttl, max_entries, expected", [
    (True, None, 10, ("set", 300.0)), (True, 5.0, 10, ("set", 5.0)), (True, 0.0, 10, ("del", 0.0)),
    (False, 5.0, 10, ("del", 0.0)), (True, 5.0, 0, ("del", 0.0)),
])
async def test_write_through_follows_the_local_rules(shareable: bool, ttl: float | None, max_entries: int,
                                                     expected: tuple[str, float]) -> None:
    """The entry's TTL travels; not stored locally or carrying dependencies: deleted in Redis instead."""
    slot = SharedSlot(TTLCache(max_entries=max_entries, ttl=300.0))
    t, _ = tier()
    t.up = True
    slot.tier = t
    slot.write_through("k", b"v", ttl, shareable=shareable)
    op = t._ops.popleft()
    assert (op[0], op[3]) == expected


async def test_only_local_invalidations_are_forwarded() -> None:
    cache = TTLCache(max_entries=10, ttl=60.0)
    slot = SharedSlot(cache)
    t, _ = tier()
    t.up = True
    slot.tier = t
    cache.drop(prefixes=("a/",))
    cache.drop(keys=("b",), origin=ORIGIN)  # applied from another replica: not sent back
    cache.write("c", b"v")  # puts go through write_through, not the hook
    assert [op[:2] for op in t._ops] == [("prefix", "a/")]


def test_a_sidecar_without_the_tier_does_not_load_redis() -> None:
    """redis-py costs ~7 MB of resident memory: only a configured tier imports it."""
    import subprocess
    import sys

    code = "import sys, perfpilot_agent.app, perfpilot_agent.__main__; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
