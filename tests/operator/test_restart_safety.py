"""The profile pass across restarts, with a faked cluster and faked sidecars (issue 11 items 4-5):
config is read back from the sidecars every pass, and a restarted operator recovers the
scaler's last step from status instead of acting on history again."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import types
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator import monitoring
from perfpilot_operator.clients.agents import Target
from perfpilot_operator.handlers.profiles import sync
from perfpilot_operator.logic import monitor as mon
from perfpilot_operator.logic.conditions import PodView, now_iso

LOG = logging.getLogger("test")


class FakeSidecars:
    """Sidecars by IP: the generation each runs; Configure from the operator always applies."""

    def __init__(self, generations: dict[str, int]) -> None:
        self.generations = generations
        self.configured: list[str] = []

    async def configure(self, target: Target, request: pb.ConfigureRequest) -> pb.ConfigureResponse:
        self.configured.append(target.host)
        self.generations[target.host] = request.generation
        return pb.ConfigureResponse(applied_generation=request.generation, applied=True)

    async def forget(self, address: str) -> None:
        pass


def runtime(agents: Any) -> Any:
    settings = types.SimpleNamespace(sidecar=types.SimpleNamespace(grpc_port=9090), rollout_concurrency=4)
    return types.SimpleNamespace(settings=settings, agents=agents, resize=False, kube=None)


PODS = [PodView(f"p{i}", f"127.1.0.{i}", True, True) for i in range(3)]


def run_pass(rt: Any, memo: Any, sidecars: FakeSidecars, generation: int = 6) -> dict[str, Any]:
    async def observe() -> monitoring.Outcome:
        return monitoring.Outcome(status={}, conditions=[], unreachable={},
                                  generations={p.name: sidecars.generations[p.ip or ""]
                                               for p in PODS})
    return asyncio.run(sync(rt=rt, memo=memo, namespace="ns", name="prof", generation=generation,
                            spec={}, status={}, pods=PODS, logger=LOG, observe=observe))


def config_applied(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "ConfigApplied")


def test_restarted_and_ahead_sidecars_are_brought_back_in_the_next_pass() -> None:
    sidecars = FakeSidecars({p.ip or "": 6 for p in PODS})
    rt, memo = runtime(sidecars), types.SimpleNamespace()
    status = run_pass(rt, memo, sidecars)
    assert sidecars.configured == [] and status["pods"]["configured"] == 3
    # p1's container restarts (same pod, same IP: admission-time config, generation 0); p2 is
    # pushed to 2**62 from inside its pod.
    sidecars.generations["127.1.0.1"] = 0
    sidecars.generations["127.1.0.2"] = 2**62
    status = run_pass(rt, memo, sidecars)
    assert sorted(sidecars.configured) == ["127.1.0.1", "127.1.0.2"]
    assert set(sidecars.generations.values()) == {6}
    assert status["pods"]["configured"] == 3 and config_applied(status)["status"] == "True"


def test_a_sidecar_counts_configured_only_while_it_reports_the_generation() -> None:
    class Refusing(FakeSidecars):
        async def configure(self, target: Target, request: pb.ConfigureRequest
                            ) -> pb.ConfigureResponse:       # an older agent: keeps its own
            self.configured.append(target.host)
            return pb.ConfigureResponse(applied_generation=self.generations[target.host])

    sidecars = Refusing({"127.1.0.0": 6, "127.1.0.1": 6, "127.1.0.2": 9})
    status = run_pass(runtime(sidecars), types.SimpleNamespace(), sidecars)
    assert status["pods"]["configured"] == 2
    assert config_applied(status)["status"] == "False"
    assert "2/3 sidecars at generation 6" in config_applied(status)["message"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "kept generation 9" in degraded["message"]


AUTO = {"target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
        "autoscaling": {"maxReplicas": 10, "metric": "queue_depth", "target": 1,
                        "interval": "15s"}}


class FakeScale:
    def __init__(self, replicas: int) -> None:
        self.current, self.reads = replicas, 0
        self.writes: list[int] = []

    async def replicas(self, namespace: str, ref: Any) -> int:
        self.reads += 1
        return self.current

    async def set_replicas(self, namespace: str, ref: Any, n: int) -> None:
        self.writes.append(n)
        self.current = n


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
