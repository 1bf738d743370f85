"""The actions of a profile pass on the selected pods: configure their sidecars, resize them in
place. Each returns what happened (logic/status composes the status from it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator.clients.agents import Target, bounded_gather, with_retries
from perfpilot_operator.logic.conditions import PodView
from perfpilot_operator.logic.desired import configure_request
from perfpilot_operator.logic.readback import to_configure
from perfpilot_operator.logic.resize import resize_patch
from perfpilot_operator.logic.status import Resize, Rollout
from perfpilot_operator.runtime import Runtime


async def configure(rt: Runtime, *, namespace: str, name: str, generation: int,
                    spec: dict[str, Any], pods: list[PodView], reported: dict[str, int],
                    unreachable: dict[str, str], target: Callable[[PodView], Target],
                    logger: Any) -> Rollout:
    """Configure every sidecar that did not report `generation` in this pass (`reported`: what
    GetStats read back; empty on a pass without it, which then sends to everyone, harmlessly:
    a repeat of the applied generation is a no-op). Returns what each sidecar runs now."""
    reported = dict(reported)
    failures: dict[str, str] = {}
    todo = to_configure(pods, reported, generation, unreachable)
    if not todo:
        return Rollout(reported, failures)
    request = configure_request(spec, generation)

    def call(p: PodView) -> Any:
        return lambda: with_retries(lambda: rt.agents.configure(target(p), request))

    results = await bounded_gather([call(p) for p in todo], limit=rt.settings.rollout_concurrency)
    for p, r in zip(todo, results):
        code = prom.rpc_result(r)
        prom.CONFIGURE_CALLS.labels(namespace, name, code).inc()
        if isinstance(r, BaseException):
            detail = r.details() if isinstance(r, grpc.aio.AioRpcError) else str(r)
            failures[p.name] = f"{code}: {detail}"
            reported.pop(p.name, None)
            continue
        if p.name in reported:
            logger.info(f"sidecar of {p.name} reported generation {reported[p.name]} "
                        f"(restarted, or configured from inside the pod): configured")
        reported[p.name] = r.applied_generation
        if r.applied_generation != generation:
            failures[p.name] = (f"sidecar kept generation {r.applied_generation} instead of "
                                f"{generation} (an older agent image?)")
    if failures:
        logger.warning(f"Configure failed for {len(failures)} pod(s): "
                       + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())[:5]))
    done = len(todo) - len(failures)
    if done:
        logger.info(f"configured {done} sidecar(s) at generation {generation}")
    return Rollout(reported, failures)


async def resize(rt: Runtime, namespace: str, spec: dict[str, Any], pods: list[PodView],
                 logger: Any) -> Resize:
    """Bring running injected pods to spec.resources in place (pods/resize, no restart)."""
    if not spec.get("resources"):
        return Resize(supported=rt.resize)
    resized, stale = 0, {}
    for p in pods:
        if not (p.running and p.injected and p.shape):
            continue
        patch = resize_patch(p.shape, spec)
        if patch is None:
            continue
        if not rt.resize:
            stale[p.name] = "no pods/resize"
            continue
        try:
            await rt.kube.resize_pod(namespace, p.name, patch)
            resized += 1
        except ApiException as e:
            detail = e.reason or str(e.status)
            try:
                detail = json.loads(e.body or "").get("message", detail)
            except (TypeError, ValueError, AttributeError):
                pass
            stale[p.name] = detail
    if resized:
        logger.info(f"resized {resized} pod(s) in place to spec.resources")
    if stale:
        logger.warning(f"{len(stale)} pod(s) keep old resources: "
                       + "; ".join(f"{k}: {v}" for k, v in sorted(stale.items())[:3]))
    return Resize(resized, stale, supported=rt.resize)
