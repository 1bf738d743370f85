"""The profile pass across restarts, with a faked cluster and faked sidecars (issue 11 items 4-5):
config is read back from the sidecars every pass, and a restarted operator recovers the
scaler's last step from status instead of acting on history again."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import types
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator import monitoring
from perfpilot_operator.clients.agents import Target
from perfpilot_operator.logic import monitor as mon
from perfpilot_operator.logic.conditions import now_iso
from perfpilot_operator.logic.status import condition
from tests.operator.fakecluster import LOG, Cluster, FakeScale, FakeSidecars, pods, runtime

PODS = pods(3)


def run_pass(cluster: Cluster) -> dict[str, Any]:
    """One resync beat (GetStats, then Configure where needed); the profile's status after it."""
    asyncio.run(cluster.beat())
    cluster.deliver_status()
    return dict(cluster.profiles["ns"][0]["status"])


def setup(sidecars: FakeSidecars, generation: int = 6) -> Cluster:
    cluster = Cluster(runtime(sidecars))
    cluster.add("ns", {}, PODS, generation=generation)
    return cluster


def test_restarted_and_ahead_sidecars_are_brought_back_in_the_next_pass() -> None:
    sidecars = FakeSidecars({p.ip or "": 6 for p in PODS})
    cluster = setup(sidecars)
    status = run_pass(cluster)
    assert sidecars.configured == [] and status["pods"]["configured"] == 3
    # p1's container restarts (same pod, same IP: admission-time config, generation 0); p2 is
    # pushed to 2**62 from inside its pod.
    sidecars.generations["127.1.0.1"] = 0
    sidecars.generations["127.1.0.2"] = 2**62
    status = run_pass(cluster)
    assert sorted(sidecars.configured) == ["127.1.0.1", "127.1.0.2"]
    assert set(sidecars.generations.values()) == {6}
    assert status["pods"]["configured"] == 3
    assert condition(status, "ConfigApplied")["status"] == "True"


def test_a_sidecar_counts_configured_only_while_it_reports_the_generation() -> None:
    class Refusing(FakeSidecars):
        async def configure(self, target: Target, request: pb.ConfigureRequest
                            ) -> pb.ConfigureResponse:       # an older agent: keeps its own
            self.configured.append(target.host)
            return pb.ConfigureResponse(applied_generation=self.generations[target.host])

    sidecars = Refusing({"127.1.0.0": 6, "127.1.0.1": 6, "127.1.0.2": 9})
    status = run_pass(setup(sidecars))
    assert status["pods"]["configured"] == 2
    assert condition(status, "ConfigApplied")["status"] == "False"
    assert "2/3 sidecars at generation 6" in condition(status, "ConfigApplied")["message"]
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and "kept generation 9" in degraded["message"]


AUTO = {"target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
        "autoscaling": {"maxReplicas": 10, "metric": "queue_depth", "target": 1,
                        "interval": "15s"}}


def autoscale(state: monitoring.MonitorState, scale: FakeScale, now: float) -> Any:
    auto = mon.autoscaling(AUTO)
    assert auto is not None
    rt: Any = types.SimpleNamespace(scale=scale)     # a fake Runtime: only the scale client
    body: Any = None                                  # Events fail and are logged, harmlessly
    return asyncio.run(monitoring._autoscale(rt, state, auto, "ns", "prof",
                                             {"queue_depth": 50.0}, [], now, body, LOG))


def test_a_restarted_operator_takes_no_step_before_one_interval_after_the_last() -> None:
    now = time.time()
    status = {"replicas": {"current": 5, "desired": 5, "reason": "ScaledUp",
                           "lastScaleTime": now_iso_at(now - 5)}}
    state = monitoring.resume(status)
    scale = FakeScale(5)
    replicas, cond = autoscale(state, scale, now)
    assert (scale.reads, scale.writes, cond) == (0, [], None)   # not due: the status is kept
    assert replicas["lastScaleTime"] == status["replicas"]["lastScaleTime"]
    # Due again, with a (fresh) high metric: the resumed scaler holds a whole up-window
    # (0s here, as the CRD's default), so it steps, and keeps lastScaleTime current.
    replicas, cond = autoscale(state, scale, now + 11)
    assert scale.writes == [9] and cond[2] == "ScaledUp"
    # A profile never scaled before: nothing to recover.
    assert monitoring.resume({}).replicas is None


def now_iso_at(ts: float) -> str:
    return now_iso(dt.datetime.fromtimestamp(ts, dt.UTC))
