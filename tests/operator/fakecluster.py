"""A faked cluster for the profile pass: the Kubernetes calls it makes are recorded (one list, so
a test counts API calls per pass), sidecars answer Configure and GetStats from a dict of
generations. The pass itself, the status composition and the resync beat are the real ones."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator.clients.agents import Target
from perfpilot_operator.handlers.profiles import resync_beat
from perfpilot_operator.logic.conditions import PodView
from perfpilot_operator.leader import always_leader
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.settings import Settings

LOG = logging.getLogger("test")


class FakeKube:
    """The Kube client's methods the pass uses; every call lands in `calls` as 'VERB what'."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.status: dict[tuple[str, str], dict[str, Any]] = {}

    async def list_profiles(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls.append("LIST perfprofiles")
        return []

    async def patch_profile_status(self, namespace: str, name: str,
                                   status: dict[str, Any]) -> None:
        self.calls.append(f"PATCH perfprofiles/{name}/status")
        self.status[(namespace, name)] = status

    async def post_event(self, obj: Any, *, type_: str, reason: str, message: str) -> None:
        self.calls.append("POST events")
        self.events.append((reason, message))

    async def prometheus_rules_available(self) -> bool:
        self.calls.append("GET monitoring.coreos.com/v1 (discovery)")
        return False

    async def restart_deployment(self, namespace: str, name: str) -> None:
        self.calls.append(f"PATCH deployments/{name}")

    async def resize_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(f"PATCH pods/{name}/resize")


class FakeSidecars:
    """Sidecars by IP: the generation each runs; Configure from the operator always applies.
    IPs in `down` do not answer."""

    def __init__(self, generations: dict[str, int]) -> None:
        self.generations = generations
        self.configured: list[str] = []
        self.down: set[str] = set()
        self.shared: dict[str, pb.SharedCacheStats] = {}     # IP -> its shared tier report

    def _check(self, target: Target) -> None:
        if target.host in self.down:
            raise ConnectionError(f"{target.host} does not answer")

    async def configure(self, target: Target, request: pb.ConfigureRequest) -> pb.ConfigureResponse:
        self._check(target)
        self.configured.append(target.host)
        self.generations[target.host] = request.generation
        return pb.ConfigureResponse(applied_generation=request.generation, applied=True)

    async def get_stats(self, target: Target) -> pb.GetStatsResponse:
        self._check(target)
        return pb.GetStatsResponse(generation=self.generations[target.host], uptime_seconds=100.0,
                                   shared_cache=self.shared.get(target.host))

    async def forget(self, address: str) -> None:
        pass


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


def runtime(sidecars: Any, *, scale: FakeScale | None = None, **settings: Any) -> Runtime:
    """The leader's runtime (the resync loop runs only where it acts: Runtime.acts_for)."""
    return Runtime(settings=Settings(rollout_concurrency=4, **settings), agents=sidecars,
                   kube=FakeKube(), scale=scale or FakeScale(1), resize=False,
                   leadership=always_leader("test-operator"))


def pods(n: int, *, injected: bool = True, owner: tuple[str, str] | None = None,
         prefix: str = "p", opted_in: bool = True) -> list[PodView]:
    return [PodView(f"{prefix}{i}", f"127.1.0.{i}", True, injected, owner=owner,
                    opted_in=opted_in) for i in range(n)]


class Cluster:
    """kopf's indexes as plain dicts (what resync_beat reads), one profile per namespace."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.profiles: dict[str, list[dict[str, Any]]] = {}
        self.pods: dict[str, list[tuple[dict[str, str], PodView]]] = {}
        self.hpas: dict[str, list[dict[str, Any]]] = {}
        self.passes: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.rv = 0

    def add(self, namespace: str, spec: dict[str, Any], views: list[PodView],
            generation: int = 1, status: dict[str, Any] | None = None) -> None:
        self.rv += 1
        spec = {"selector": {"matchLabels": {"app": "web"}}, **spec}
        self.profiles[namespace] = [{
            "apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile",
            "metadata": {"name": "prof", "namespace": namespace, "uid": f"uid-{namespace}",
                         "resourceVersion": str(self.rv), "generation": generation},
            "spec": spec, "status": status or {}}]
        self.pods[namespace] = [({"app": "web"}, v) for v in views]

    def deliver_status(self) -> None:
        """The watch delivers the status patches: the index holds them, at a new version."""
        for (ns, _), status in self.rt.kube.status.items():
            self.rv += 1
            entry = self.profiles[ns][0]
            entry["status"] = {**entry["status"], **status}
            entry["metadata"] = {**entry["metadata"], "resourceVersion": str(self.rv)}
        self.rt.kube.status.clear()

    def set_pods(self, namespace: str, views: list[PodView]) -> None:
        self.pods[namespace] = [({"app": "web"}, v) for v in views]

    async def beat(self) -> list[str]:
        """One resync beat, run to the end; the Kubernetes calls it made."""
        self.rt.kube.calls.clear()
        resync_beat(self.rt, kopf.OperatorSettings(), self.passes, self.profiles, self.pods,
                    self.hpas, LOG)
        await asyncio.gather(*self.passes.values())
        return list(self.rt.kube.calls)
