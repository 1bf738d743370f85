"""The one TTL + LRU + dependency cache of both tiers (perfpilot_contract.tiercache): bounds held
under any sequence of operations (hypothesis), dependency cascades, the change hook."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from perfpilot_contract.limits import MAX_CHANGE_KEYS
from perfpilot_contract.tiercache import Change, Deps, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


keys = st.sampled_from([f"k{i}" for i in range(12)])
ops = st.lists(st.one_of(
    st.tuples(st.just("put"), keys, st.integers(0, 40), st.lists(keys, max_size=3), st.sampled_from(["", "a", "b"])),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("drop_key"), keys),
    st.tuples(st.just("drop_prefix"), st.sampled_from(["k", "k1", "k2", "x"])),
    st.tuples(st.just("drop_tag"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("tick"), st.floats(0, 5)),
    st.tuples(st.just("shrink"), st.integers(0, 8), st.integers(0, 120)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 8), st.integers(0, 120))
def test_entries_and_bytes_stay_bounded_and_indexes_consistent(program: list[tuple], max_entries: int,
                                                               max_bytes: int) -> None:
    clock = Clock()
    c = TTLCache(max_entries=max_entries, ttl=3.0, max_bytes=max_bytes, clock=clock)
    for op in program:
        if op[0] == "put":
            _, k, size, dep_keys, tag = op
            c.put(k, size, size=size, deps=Deps(keys=tuple(dep_keys), tags=(tag,) if tag else ()))
        elif op[0] == "get":
            hit = c.get(op[1])
            assert hit is None or hit[1] > 0
        elif op[0] == "drop_key":
            c.drop(keys=(op[1],))
            assert op[1] not in c
        elif op[0] == "drop_prefix":
            c.drop(prefixes=(op[1],))
            assert not any(k.startswith(op[1]) for k in c._data)
        elif op[0] == "drop_tag":
            c.drop(tags=(op[1],))
            assert not any(op[1] in item[3].tags for item in c._data.values())
        elif op[0] == "tick":
            clock.now += op[1]
        else:
            c.reconfigure(max_entries=op[1], ttl=3.0, max_bytes=op[2])
        assert len(c) <= c.max_entries and c.bytes <= c.max_bytes
        assert c.bytes == sum(item[2] for item in c._data.values())
        # no entry survives whose key-dependency was dropped after it was written: every indexed
        # dependent is a live entry, and every live entry is indexed under each of its dependencies
        for index in (c._on_key, c._on_prefix, c._on_tag):
            for dependents in index.values():
                assert dependents and dependents <= set(c._data)
        for k, item in c._data.items():
            for d in item[3].keys:
                assert k in c._on_key[d]


def test_writing_or_invalidating_a_dependency_drops_its_dependents_transitively() -> None:
    c = TTLCache(max_entries=100, ttl=60.0, clock=Clock())
    c.put("user/1", b"u")
    c.put("profile/1", b"p", deps=Deps(keys=("user/1",)))
    c.put("page/1", b"x", deps=Deps(keys=("profile/1",)))             # depends on a dependent
    c.put("feed/1", b"f", deps=Deps(prefixes=("user/",)))
    c.put("other", b"o", deps=Deps(tags=("t",)))
    change = c.write("user/1", b"u2")                                  # an overwrite is a change
    assert sorted(change.dependents) == ["feed/1", "page/1", "profile/1"] and change.removed == 3
    assert sorted(c._data) == ["other", "user/1"]
    assert c.counters.dependency_invalidations == 3
    assert c.drop(tags=("t",)).removed == 1 and "other" not in c


def test_prefix_invalidation_reaches_dependents_of_absent_keys_and_overlapping_prefixes() -> None:
    c = TTLCache(max_entries=100, ttl=60.0, clock=Clock())
    c.put("a", 1, deps=Deps(keys=("user/7",)))       # user/7 itself is not cached
    c.put("b", 1, deps=Deps(prefixes=("user/",)))    # invalidating user/7/ overlaps user/
    c.put("c", 1, deps=Deps(prefixes=("item/",)))
    change = c.drop(prefixes=("user/7",))
    assert sorted(change.dependents) == ["a", "b"] and list(c._data) == ["c"]


def test_listeners_see_every_change_and_long_cascades_are_truncated() -> None:
    c = TTLCache(max_entries=10_000, ttl=60.0, clock=Clock())
    seen: list[Change] = []
    c.subscribe(seen.append)
    for i in range(MAX_CHANGE_KEYS + 5):
        c.put(f"d{i}", i, deps=Deps(tags=("all",)))
    c.put("root", 0)
    c.put("x", 1, deps=Deps(keys=("root",)))
    assert seen[-1] == Change("put", keys=("x",))
    change = c.drop(keys=("root",), origin="shared")
    assert seen[-1] is change and change.origin == "shared" and change.dependents == ("x",)
    big = c.drop(tags=("all",))
    assert big.removed == MAX_CHANGE_KEYS + 5 and big.dependents == () and big.tags == ("all",)
    c.put("p", 0)
    for i in range(MAX_CHANGE_KEYS + 1):
        c.put(f"q{i}", i, deps=Deps(keys=("p",)))
    over = c.write("p", 1)
    assert over.truncated and len(over.dependents) == MAX_CHANGE_KEYS and over.removed == MAX_CHANGE_KEYS + 1


def test_ttl_zero_or_capacity_zero_stores_nothing_but_still_drops_the_old_value() -> None:
    c = TTLCache(max_entries=10, ttl=60.0, clock=Clock())
    c.put("k", 1)
    c.put("k", 2, ttl=0.0)
    assert c.get("k") is None
    c.put("k", 3)
    c.reconfigure(max_entries=0, ttl=60.0)
    c.put("k", 4)
    assert len(c) == 0
