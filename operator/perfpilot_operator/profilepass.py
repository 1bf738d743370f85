"""One pass over a profile: observe, roll out, resize, audit coverage, then compose the status.

Level-triggered: the same pass runs on create/resume, on every spec change (at once, without the
monitoring half) and in the periodic resync (late pods, recovered sidecars, stats, alerts,
autoscaling, the coverage audit). Each step returns data; `logic/status.compose_status` alone
builds the status from it, so what the status says is what this pass read back from the sidecars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from perfpilot_operator import coverage, monitoring, rollout
from perfpilot_operator import metrics as prom
from perfpilot_operator.clients.agents import Target
from perfpilot_operator.logic import coverage as audit
from perfpilot_operator.logic.conditions import PodView, Refusal
from perfpilot_operator.logic.status import compose_status, condition
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.state import ProfileState, resume


def agent_target(rt: Runtime) -> Callable[[PodView], Target]:
    """How this pass reaches each sidecar: the one place that builds the agent Target. The
    credentials are the operator's client certificate (mutual TLS), held by rt.agents."""
    port = rt.settings.sidecar.grpc_port
    return lambda p: Target(p.ip or "", port)


async def _close_gone_channels(rt: Runtime, state: ProfileState, pods: list[PodView]) -> None:
    """Channels to sidecars whose pods are gone are closed (housekeeping only: which config a
    sidecar runs is never remembered, see logic/readback)."""
    port = rt.settings.sidecar.grpc_port
    live = {f"{p.ip}:{port}" for p in pods if p.running and p.ip}
    for address in state.addresses - live:
        await rt.agents.forget(address)
    state.addresses = live


async def run(*, rt: Runtime, state: ProfileState, body: kopf.Body, previous: dict[str, Any],
              pods: list[PodView], refusals: list[Refusal], hpas: list[dict[str, Any]] | None,
              logger: Any) -> dict[str, Any]:
    """The new status of the profile. `hpas` (the namespace's HorizontalPodAutoscalers) given:
    a periodic pass, which also reads stats, advances alerts and autoscales."""
    meta = body.get("metadata", {})
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation", 0))
    spec = dict(body.get("spec", {}))
    await _close_gone_channels(rt, state, pods)
    target = agent_target(rt)

    observed = None
    if hpas is not None:
        if state.monitor is None:
            state.monitor = resume(previous)
        # What each sidecar reports running (GetStats, then Configure's answer) is the truth,
        # not what this operator sent it earlier.
        observed = await monitoring.observe(rt=rt, state=state.monitor, body=body, spec=spec,
                                            pods=pods, target=target, hpas=hpas, logger=logger)
    configured = await rollout.configure(
        rt, namespace=namespace, name=name, generation=generation, spec=spec, pods=pods,
        reported=observed.generations if observed is not None else {},
        unreachable=observed.unreachable if observed is not None else {},
        target=target, logger=logger)
    resized = await rollout.resize(rt, namespace, spec, pods, logger)
    missing = coverage.uninjected(rt, namespace, pods)
    await coverage.watchdog(rt, state, body, missing, logger)

    new = compose_status(generation=generation, previous=previous, pods=pods, rollout=configured,
                         resize=resized, refusals=refusals, observed=observed,
                         coverage_advice=audit.advice(missing))
    await _events(rt, body, previous, new, logger)
    for state_, n in new["pods"].items():
        prom.PODS.labels(namespace, name, state_).set(n)
    return new


async def _events(rt: Runtime, body: kopf.Body, old: dict[str, Any], new: dict[str, Any],
                  logger: Any) -> None:
    """Warning Events where `kubectl describe perfprofile` shows them: the coverage audit when
    the number of pods without the sidecar changes, and when the API server starts refusing the
    selected pods (or says why differently)."""
    before = (old.get("pods") or {}).get("uninjected", 0)
    after = (new.get("pods") or {}).get("uninjected", 0)
    if after and after != before:
        await monitoring.post_event(rt, body, "Warning", "PodsWithoutSidecar",
                                    condition(new, "InjectionComplete").get("message", ""), logger)

    def refused(status: dict[str, Any]) -> str | None:
        c = condition(status, "InjectionComplete")
        return str(c.get("message")) if c.get("reason") == "PodsRefused" else None

    message = refused(new)
    if message and message != refused(old):
        await monitoring.post_event(rt, body, "Warning", "PodsRefused", message, logger)
