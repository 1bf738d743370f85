"""Leader election (logic/lease.py, leader.py) against a fake Lease API with the API server's
optimistic concurrency (resourceVersion), and the clock moved by hand."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import leader as leader_mod
from perfpilot_operator import metrics as prom
from perfpilot_operator.leader import Leadership, LeaseElector, always_leader
from perfpilot_operator.logic.lease import (
    Action, LeaseTimings, Record, decide, lease_spec, released_spec,
)
from tests.operator.fakeleases import Clock, FakeLeases

T = LeaseTimings()


def test_decide_follows_client_go() -> None:
    held = Record(holder="b", duration=10, transitions=3, resource_version="7")
    assert decide(None, "a", 0, 0) is Action.CREATE
    assert decide(held, "b", 0, 100) is Action.RENEW
    # Another holder: alive until the record has stayed unchanged for the whole duration, by
    # the candidate's own clock (never the holder's renewTime).
    assert decide(held, "a", observed_at=50, now=59.9) is Action.WAIT
    assert decide(held, "a", observed_at=50, now=60) is Action.ACQUIRE
    released = Record(holder="", duration=1, transitions=3, resource_version="8")
    assert decide(released, "a", observed_at=50, now=50) is Action.ACQUIRE


def test_lease_spec_counts_transitions() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)
    held = Record(holder="b", duration=10, transitions=3, resource_version="7")
    created = lease_spec(None, "a", Action.CREATE, T, now)
    assert created == {"holderIdentity": "a", "leaseDurationSeconds": 10,
                       "renewTime": "2026-01-02T03:04:05.006000Z",
                       "acquireTime": "2026-01-02T03:04:05.006000Z", "leaseTransitions": 0}
    assert lease_spec(held, "a", Action.ACQUIRE, T, now)["leaseTransitions"] == 4
    renewed = lease_spec(held, "b", Action.RENEW, T, now)
    assert renewed["leaseTransitions"] == 3 and "acquireTime" not in renewed
    assert released_spec(held) == {"holderIdentity": None, "leaseDurationSeconds": 1,
                                   "leaseTransitions": 3}


def test_timings_are_checked() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaseTimings(duration=5, renew_deadline=6, retry=1)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock.over(monkeypatch, leader_mod)


def elector(fake: FakeLeases, identity: str) -> LeaseElector:
    ld = Leadership(identity=identity, namespace="perfpilot-system", lease="perfpilot-operator")
    e = LeaseElector(client.ApiClient(), ld, T)
    e.coord = fake  # type: ignore[assignment]
    return e


def test_one_leader_and_takeover_after_the_lease_expires(clock: Clock) -> None:
    fake = FakeLeases()
    a, b = elector(fake, "a"), elector(fake, "b")
    a.step()
    b.step()
    assert (a.ld.is_leader, b.ld.is_leader) == (True, False)
    assert b.ld.holder == "a" and fake.obj and fake.obj["spec"]["holderIdentity"] == "a"
    for _ in range(10):           # a renews every retry period; b never takes over
        clock.now += T.retry
        a.step()
        b.step()
        assert (a.ld.is_leader, b.ld.is_leader) == (True, False)
    # a dies: b waits out the duration from the last change it saw, then takes over.
    takeover = None
    for i in range(1, 20):
        clock.now += T.retry
        b.step()
        if b.ld.is_leader:
            takeover = i * T.retry
            break
    assert takeover is not None and T.duration <= takeover <= T.duration + T.retry
    assert fake.obj and fake.obj["spec"]["holderIdentity"] == "b"
    assert fake.obj["spec"]["leaseTransitions"] == 1
    assert prom.LEADER.labels("b")._value.get() == 1   # noqa: SLF001


def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires(clock: Clock) -> None:
    fake = FakeLeases()
    a = elector(fake, "a")
    a.step()
    assert a.ld.is_leader
    fake.down = True

    renewed = clock.now
    while a.ld.is_leader:
        clock.now += T.retry
        asyncio.run(a.attempt())
    took = clock.now - renewed
    # It stops acting after the renew deadline, before anyone may take over (the duration).
    assert T.renew_deadline < took <= T.renew_deadline + T.retry < T.duration
    assert not a.ld.elected.is_set() and a.ld.holder == ""


def test_release_hands_over_at_once(clock: Clock) -> None:
    fake = FakeLeases()
    a, b = elector(fake, "a"), elector(fake, "b")
    a.step()
    b.step()
    asyncio.run(a.release())
    assert not a.ld.is_leader
    b.step()                       # no waiting for the duration
    assert b.ld.is_leader


def test_two_candidates_racing_for_a_free_lease_get_one_leader(clock: Clock) -> None:
    fake = FakeLeases()
    a, b = elector(fake, "a"), elector(fake, "b")
    # Both read "no lease" before either writes: the second create gets 409 and stays out.
    orig = fake.read_namespaced_lease
    reads = {"n": 0}

    def stale_read(name: str, namespace: str, _request_timeout: float | None = None
                   ) -> client.V1Lease:
        reads["n"] += 1
        if reads["n"] <= 2:
            raise ApiException(status=404, reason="Not Found")
        return orig(name, namespace, _request_timeout=_request_timeout)

    fake.read_namespaced_lease = stale_read  # type: ignore[method-assign]
    a.step()
    b.step()
    assert (a.ld.is_leader, b.ld.is_leader) == (True, False)
    b.step()
    assert b.ld.holder == "a"


def test_leadership_events_and_always_leader() -> None:
    ld = Leadership(identity="me")
    ld.set(True, "me")
    assert ld.elected.is_set() and ld.changed.is_set()
    ld.changed.clear()
    ld.set(True, "me")             # no change, no event
    assert not ld.changed.is_set()
    ld.set(False, "other")
    assert not ld.elected.is_set() and ld.changed.is_set() and ld.holder == "other"
    assert always_leader("solo").is_leader


def test_renewals_do_not_queue_behind_other_work_on_the_default_executor() -> None:
    """The passes' status patches run on the loop's default executor (6 threads on 2 cores): a
    renewal queued behind them missed its deadline on a slow API server."""
    import threading

    fake = FakeLeases()
    a = elector(fake, "a")
    busy = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        blocked = [loop.run_in_executor(None, busy.wait, 30) for _ in range(64)]
        try:
            await asyncio.wait_for(a.attempt(), timeout=10)
        finally:
            busy.set()
            await asyncio.gather(*blocked)
    asyncio.run(main())
    assert a.ld.is_leader


def test_a_leader_whose_request_hangs_steps_down_before_the_lease_can_expire() -> None:
    """A request the API server never answers (the client's timeout ends it, later): the leader
    still stops acting after the renew deadline, before another replica may take over."""

    t = LeaseTimings(duration=4.0, renew_deadline=1.0, retry=0.1)
    fake = FakeLeases()
    a = elector(fake, "a")
    a.timings = t
    asyncio.run(a.attempt())
    assert a.ld.is_leader
    # bounded by the watchdog, not by the hung call
    assert fake.hang_while(a.attempt, lambda: a.ld.is_leader) < t.duration
    asyncio.run(a.attempt())                      # the API answers again: it leads again
    assert a.ld.is_leader
