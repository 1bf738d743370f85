"""Profiles spread over two operator replicas (PERFPILOT_SHARDING=true; issue 12 item 4), on the
real control plane, with real agents (the agent fleet) on every pod's IP.

- each profile is reconciled by exactly the replica rendezvous hashing names (each replica's
  own /metrics: GetStats series only for its share), and every profile's status is complete;
- a replica SIGKILLed: the other takes its share after its member Lease expires plus the handoff,
  and a spec change made right after the kill reaches every sidecar;
- the replica back: its share moves back to it, and a spec change to one of those profiles is
  applied (by it: the other no longer reads those profiles' sidecars).

Times are printed ([sharding] ...); the deadlines are generous bounds, not measurements.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import dev
from e2e.harness.cluster import LocalCluster
from e2e.harness.replicas import Pair, Replica, replica_pair, until
from e2e.harness.scale import deployment_doc, profile_doc
from perfpilot_operator.logic.lease import LeaseTimings
from perfpilot_operator.logic.shards import owner

pytestmark = pytest.mark.local_harness

PROFILES = [f"app-{i}" for i in range(12)]
REPLICAS = 2
T = LeaseTimings()
TAKEOVER_BOUND = T.duration + T.duration + 25    # member Lease expiry + handoff + slack


@pytest.fixture()
def fleet(cluster: LocalCluster) -> Iterator[subprocess.Popen[bytes]]:
    """Real agents (the sidecar's server code) for the fleet-labelled pods, on their pod IPs."""
    dev.stop(cluster, "shard-fleet")
    proc = dev.start(cluster, "shard-fleet", dev.fleet_command(), {})
    yield proc
    proc.terminate()
    proc.wait(timeout=30)
    dev.stop(cluster, "shard-fleet")


@pytest.fixture()
def pair(cluster: LocalCluster, podrunner: subprocess.Popen[bytes]) -> Iterator[Pair]:
    with replica_pair(cluster, {"PERFPILOT_SHARDING": "true"},
                      names=("shard-a", "shard-b")) as p:
        yield p


def statuses(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    out = json.loads(cluster.kubectl("get", "pp", "-n", namespace, "-o", "json").stdout)
    return {i["metadata"]["name"]: i for i in out["items"]}


def all_configured(cluster: LocalCluster, namespace: str, generation: int) -> bool:
    sts = statuses(cluster, namespace)
    return len(sts) == len(PROFILES) and all(
        (p.get("status") or {}).get("observedGeneration") == generation
        and ((p.get("status") or {}).get("pods") or {}).get("configured") == REPLICAS
        for p in sts.values())


def read_share(r: Replica, namespace: str) -> tuple[set[str], float]:
    """(profiles whose sidecars this replica reads, perfpilot_operator_profiles_owned)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.metrics}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return set(), -1.0
    share, owned = set(), -1.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "perfpilot_operator_getstats_calls_total" and \
                    s.labels.get("namespace") == namespace:
                share.add(s.labels["profile"])
            if s.name == "perfpilot_operator_profiles_owned":
                owned = s.value
    return share, owned


def expected(pair: Pair, namespace: str, members: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {m: set() for m in members}
    for name in PROFILES:
        who = owner((namespace, name), members)
        assert who is not None
        out[who].add(name)
    return out


def shares_are(pair: Pair, namespace: str, want: dict[str, set[str]]) -> bool:
    """Each live replica reads exactly its share (a dead one: nothing to read)."""
    for r in (pair.a, pair.b):
        if r.proc is None or r.proc.poll() is not None:
            continue
        share, owned = read_share(r, namespace)
        mine = want.get(r.identity, set())
        if share != mine or owned != len(mine):
            print(f"[sharding] {r.name}: reads {sorted(share)} (owned {owned:g}), "
                  f"expected {sorted(mine)}")
            return False
    return True


def patch(cluster: LocalCluster, namespace: str, names: set[str], max_queue: int) -> None:
    for name in sorted(names):
        cluster.kubectl("patch", "pp", name, "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"pools": {"maxQueue": max_queue}}}))


def test_profiles_are_spread_over_two_replicas_and_move_when_one_dies_and_returns(
        pair: Pair, fleet: subprocess.Popen[bytes], cluster: LocalCluster,
        namespace: str) -> None:
    a, b = pair.a, pair.b
    docs = []
    for name in PROFILES:
        docs += [profile_doc(name), deployment_doc(name, REPLICAS, fleet=True)]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": docs}))
    until(pair, lambda: all_configured(cluster, namespace, 1),
          f"{len(PROFILES)} profiles x {REPLICAS} pods configured by the two replicas", 180)
    both = expected(pair, namespace, {a.identity, b.identity})
    assert both[a.identity] and both[b.identity], f"one replica owns nothing: {both}"
    until(pair, lambda: shares_are(pair, namespace, both),      # b's handoff, then a pass
          f"each replica reading exactly its share: {both}", 120)
    for r in (a, b):
        assert "profiles spread over 2 replica(s)" in pair.log(r)

    # b dies: a takes b's share after b's member Lease expires and the handoff, and a spec
    # change made right after the kill reaches every sidecar of every profile.
    t_kill = time.monotonic()
    pair.kill(b)
    patch(cluster, namespace, set(PROFILES), 200)
    until(pair, lambda: all_configured(cluster, namespace, 2),
          "generation 2 configured everywhere by the surviving replica", TAKEOVER_BOUND + 30)
    took = time.monotonic() - t_kill
    alone = expected(pair, namespace, {a.identity})
    until(pair, lambda: shares_are(pair, namespace, alone), "a reading every profile", 30)

    # b back: its share moves back to it; a change to one of its profiles is applied.
    t_back = time.monotonic()
    pair.start(b)
    until(pair, lambda: shares_are(pair, namespace, both),
          "b's share back on b (and off a)", TAKEOVER_BOUND)
    moved = time.monotonic() - t_back
    patch(cluster, namespace, both[b.identity], 300)
    until(pair, lambda: all(
        (st := (p.get("status") or {})).get("observedGeneration") == p["metadata"]["generation"]
        and (st.get("pods") or {}).get("configured") == REPLICAS
        for p in statuses(cluster, namespace).values()), "b applying generation 3", 60)
    print(f"\n[sharding] {len(PROFILES)} profiles: a {len(both[a.identity])}, b "
          f"{len(both[b.identity])}; b SIGKILLed: every profile at the new generation "
          f"{took:.1f}s after the kill (member lease {T.duration:g}s + handoff "
          f"{T.duration:g}s); b restarted: its share back {moved:.1f}s after its start")
