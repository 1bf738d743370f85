"""Profiles spread over replicas (logic/shards.py, shards.py): rendezvous ownership, the handoff
that never lets two replicas act on one profile, and the member Leases against a fake Lease API
with resourceVersion checks, the clock moved by hand."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from perfpilot_operator import shards as shards_mod
from perfpilot_operator.logic.lease import LeaseTimings
from perfpilot_operator.logic.shards import Ownership, live_members, owner
from perfpilot_operator.shards import MEMBER_LABEL, MemberLeases, member_lease_name
from tests.operator.fakeleases import Clock, FakeLeases

T = LeaseTimings()
KEYS = [(f"ns-{i % 7}", f"app-{i}") for i in range(300)]


def test_every_replica_computes_the_same_owner_and_shares_are_even() -> None:
    members = ["op-a", "op-b", "op-c"]
    owners = [owner(k, members) for k in KEYS]
    assert owners == [owner(k, list(reversed(members))) for k in KEYS]   # order-independent
    counts = {m: owners.count(m) for m in members}
    assert all(60 <= c <= 140 for c in counts.values()), counts          # ~100 each
    assert owner(KEYS[0], []) is None


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text("abcdefgh-", min_size=1, max_size=8), min_size=1, max_size=6),
       st.text("abcdefgh-", min_size=1, max_size=8))
def test_a_member_joining_takes_only_profiles_for_itself(members: set[str], new: str) -> None:
    if new in members:
        return
    before = {k: owner(k, members) for k in KEYS[:60]}
    after = {k: owner(k, members | {new}) for k in KEYS[:60]}
    moved = {k for k in before if before[k] != after[k]}
    assert all(after[k] == new for k in moved)       # nobody else's profiles move
    # ... and leaving gives back exactly those.
    assert {k: owner(k, members) for k in KEYS[:60]} == before


def test_live_members_by_the_readers_clock_and_released_ones_are_gone() -> None:
    observed = {"l-a": ("5", 100.0), "l-b": ("9", 90.0), "l-c": ("3", 99.0)}
    holders = {"l-a": "a", "l-b": "b", "l-c": ""}
    assert live_members(observed, holders, duration=10, now=100.5) == {"a"}   # b stale, c left
    assert live_members(observed, holders, duration=10, now=99.9) == {"a", "b"}


def test_gained_profiles_wait_the_handoff_kept_ones_do_not() -> None:
    a = Ownership(me="a", grace=10)
    a.set_healthy(True, 0)
    a.update(frozenset({"a"}), 0)
    assert not any(a.acts(k, 9.9) for k in KEYS)           # just started: others may still act
    assert all(a.acts(k, 10.0) for k in KEYS)
    # b joins: a loses b's share at once, keeps the rest without a pause.
    lost = a.update(frozenset({"a", "b"}), 20)
    b_share = {k for k in KEYS if owner(k, {"a", "b"}) == "b"}
    assert lost == b_share and 0 < len(lost) < len(KEYS)
    assert all(a.acts(k, 20) == (k not in b_share) for k in KEYS)
    b = Ownership(me="b", grace=10)
    b.set_healthy(True, 21)
    b.update(frozenset({"a", "b"}), 21)
    assert not any(b.acts(k, 30.9) for k in KEYS)
    assert {k for k in KEYS if b.acts(k, 31)} == b_share
    # A profile created while the set is stable is acted on at once, by its owner only.
    new = ("ns-new", "fresh")
    assert a.acts(new, 40) != b.acts(new, 40)
    # b dies: a takes b's share only after the handoff from the moment it saw the change.
    a.update(frozenset({"a"}), 50)
    assert not any(a.acts(k, 59) for k in b_share)
    assert all(a.acts(k, 60) for k in b_share)


def test_never_two_replicas_act_on_one_profile_through_a_join_and_a_partition() -> None:
    """b joins at 30 (a sees it one poll later); at 60 b is cut off from the API server: it
    stops when it has not renewed for the renew deadline, a drops it after the duration. At no
    instant do both act on one profile, and every profile is acted on again afterwards."""
    a, b = Ownership(me="a", grace=T.duration), Ownership(me="b", grace=T.duration)
    ab = frozenset({"a", "b"})
    events = [(0.0, a, "view", frozenset({"a"})), (0.0, a, "healthy", True),
              (30.0, b, "healthy", True), (30.0, b, "view", ab),
              (30.0 + T.retry, a, "view", ab),
              (60.0 + T.renew_deadline, b, "healthy", False),
              (60.0 + T.duration + T.retry, a, "view", frozenset({"a"}))]
    now, acted_by = 0.0, {"a": set(), "b": set()}
    while now < 100:
        for at, o, what, value in events:
            if at <= now < at + 0.1:
                if what == "view":
                    o.update(value, now)  # type: ignore[arg-type]
                else:
                    o.set_healthy(bool(value), now)
        for k in KEYS[:60]:
            on_a, on_b = a.acts(k, now), b.acts(k, now)
            assert not (on_a and on_b), (k, now)
            for name, on in (("a", on_a), ("b", on_b)):
                if on:
                    acted_by[name].add(k)
        now = round(now + 0.1, 1)
    assert acted_by["b"] and acted_by["b"] < set(KEYS[:60])       # b had its share
    assert all(a.acts(k, now) for k in KEYS[:60])                  # a has everything back


def test_an_unhealthy_replica_stops_and_waits_the_handoff_when_back() -> None:
    a = Ownership(me="a", grace=10)
    a.set_healthy(True, 0)
    a.update(frozenset({"a"}), 0)
    assert a.acts(KEYS[0], 10)
    a.set_healthy(False, 20)
    assert not a.acts(KEYS[0], 20) and a.owned(KEYS) == 0
    a.set_healthy(True, 30)
    assert not a.acts(KEYS[0], 39.9) and a.acts(KEYS[0], 40)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock.over(monkeypatch, shards_mod)


def member(store: FakeLeases, me: str) -> MemberLeases:
    m = MemberLeases(client.ApiClient(), Ownership(me=me, grace=T.duration),
                     namespace="perfpilot-system", group="perfpilot-operator", timings=T)
    m.coord = store  # type: ignore[assignment]
    return m


def test_member_leases_find_each_other_and_a_dead_one_drops_out(clock: Clock) -> None:
    store = FakeLeases()
    a, b = member(store, "op-a"), member(store, "op-b")
    for _ in range(7):      # past the handoff: each acts on its share
        asyncio.run(a.attempt())
        asyncio.run(b.attempt())
        clock.now += T.retry
    assert a.own.members == b.own.members == {"op-a", "op-b"}
    lease = store.objs[member_lease_name("perfpilot-operator", "op-a")]
    assert lease["metadata"]["labels"][MEMBER_LABEL] == "perfpilot-operator"
    assert lease["spec"]["holderIdentity"] == "op-a"
    # b dies (its last renewal was just before this): a drops it once b's Lease has stayed
    # unchanged for the duration by a's clock, counted from when a first saw that version.
    died = clock.now - T.retry
    acting = {k for k in KEYS if a.own.acts(k, clock.now)}     # a's share, past its handoff
    assert acting
    while a.own.members != {"op-a"}:
        assert clock.now - died <= T.duration + 2 * T.retry
        clock.now += T.retry
        asyncio.run(a.attempt())
    assert clock.now - died >= T.duration
    # a loses nothing when b goes; b's share comes to a after the handoff
    assert all(a.own.acts(k, clock.now) for k in acting)
    # Long gone: its Lease is deleted (pods replaced by a rollout leave no litter).
    for _ in range(40):
        clock.now += T.retry
        asyncio.run(a.attempt())
    assert list(store.objs) == [member_lease_name("perfpilot-operator", "op-a")]


def test_a_member_that_cannot_renew_stops_acting_before_others_take_over(clock: Clock) -> None:
    store = FakeLeases()
    a = member(store, "op-a")
    asyncio.run(a.attempt())
    clock.now += T.duration
    assert a.own.acts(KEYS[0], clock.now)
    store.down = True
    t0 = clock.now
    while a.own.healthy:
        clock.now += T.retry
        asyncio.run(a.attempt())
    assert clock.now - t0 <= T.renew_deadline + T.retry < T.duration + T.retry
    assert not a.own.acts(KEYS[0], clock.now)
    store.down = False
    asyncio.run(a.attempt())
    assert a.own.healthy and not a.own.acts(KEYS[0], clock.now)   # the handoff again
    clock.now += T.duration
    assert a.own.acts(KEYS[0], clock.now)


def test_a_member_whose_request_hangs_stops_acting_before_others_take_over() -> None:
    """A request the API server never answers: the watchdog, not the hung call, ends acting."""
    import time

    t = LeaseTimings(duration=4.0, renew_deadline=1.0, retry=0.1)
    store = FakeLeases()
    a = MemberLeases(client.ApiClient(), Ownership(me="op-a", grace=0.0),
                     namespace="perfpilot-system", group="perfpilot-operator", timings=t)
    a.coord = store  # type: ignore[assignment]
    asyncio.run(a.attempt())
    assert a.own.acts(KEYS[0], time.monotonic())
    assert store.hang_while(a.attempt, lambda: a.own.healthy) < t.duration
    assert a.own.healthy                     # answered again: back, after a new handoff


def test_release_hands_the_share_over_at_the_next_poll(clock: Clock) -> None:
    store = FakeLeases()
    a, b = member(store, "op-a"), member(store, "op-b")
    for m in (a, b, a, b):
        asyncio.run(m.attempt())
    assert b.own.members == {"op-a", "op-b"}
    asyncio.run(a.release())
    assert not a.own.healthy
    clock.now += T.retry
    asyncio.run(b.attempt())
    assert b.own.members == {"op-b"}
