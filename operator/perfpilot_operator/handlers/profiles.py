"""Reconcile a PerfProfile: roll its config out to the selected sidecars and report status.

Level-triggered: the same pass runs on create/resume, on every spec change (at once) and in the
operator-level resync loop (late pods, recovered sidecars, stats, alerts, autoscaling). Which
generation each sidecar runs is read back from it every pass (GetStats in the resync, Configure's
answer), never remembered: a pass without GetStats (a spec change, a start) sends to everyone,
harmlessly (a repeat of the applied generation is a no-op).
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
from typing import Any, cast

import grpc
import kopf
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator import monitoring
from perfpilot_operator.clients.agents import Target, bounded_gather, with_retries
from perfpilot_operator.logic.conditions import (
    PodView, Refusal, count_pods, refusal_condition, set_condition,
)
from perfpilot_operator.logic.desired import configure_request
from perfpilot_operator.logic.injection import selector_matches
from perfpilot_operator.logic.readback import to_configure, with_reports
from perfpilot_operator.logic.resize import resize_patch
from perfpilot_operator.runtime import Runtime

GROUP, VERSION, PLURAL = "perfpilot.io", "v1alpha1", "perfprofiles"


def refused_pods(spec: dict[str, Any], namespace: str, refusals_by_namespace: Any
                 ) -> list[Refusal]:
    """The selected pods' ReplicaSets that the API server refuses pods of."""
    if refusals_by_namespace is None:
        return []
    selector = spec.get("selector", {})
    return [r for r in refusals_by_namespace.get(namespace, [])
            if selector_matches(selector, r.labels)]


def selected_pods(spec: dict[str, Any], namespace: str,
                  pods_by_namespace: kopf.Index[str, tuple[dict[str, str], PodView]]
                  ) -> list[PodView]:
    selector = spec.get("selector", {})
    return [view for labels, view in pods_by_namespace.get(namespace, [])
            if selector_matches(selector, labels)]


async def sync(*, rt: Runtime, memo: Any, namespace: str, name: str, generation: int,
               spec: dict[str, Any], status: dict[str, Any], pods: list[PodView],
               logger: logging.Logger | logging.LoggerAdapter[Any],
               observe: Any = None, refusals: list[Refusal] | None = None) -> dict[str, Any]:
    """One pass; returns the new status. `observe()`, when given, runs the monitoring
    half (stats, alerts, autoscaling) and returns a monitoring.Outcome."""
    # Channels to sidecars whose pods are gone are closed (housekeeping only: which config a
    # sidecar runs is never remembered, see logic/readback).
    port = rt.settings.sidecar.grpc_port
    addresses: set[str] = getattr(memo, "addresses", None) or set()
    live = {f"{p.ip}:{port}" for p in pods if p.running and p.ip}
    for address in addresses - live:
        await rt.agents.forget(address)
    memo.addresses = live
    failures: dict[str, str] = {}

    # What each sidecar reports running (GetStats, then Configure's answer) is the truth, not
    # what this operator sent it earlier: a restarted sidecar container is back at its
    # admission-time config, a sidecar pushed ahead from inside the pod is not the profile's.
    outcome = await observe() if observe is not None else None
    unreachable = dict(outcome.unreachable) if outcome is not None else {}
    reported: dict[str, int] = dict(outcome.generations) if outcome is not None else {}
    todo = to_configure(pods, reported, generation, unreachable)
    if todo:
        request = configure_request(spec, generation)

        def call(p: PodView) -> Any:
            target = Target(p.ip or "", port)
            return lambda: with_retries(lambda: rt.agents.configure(target, request))

        results = await bounded_gather([call(p) for p in todo],
                                       limit=rt.settings.rollout_concurrency)
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
    resized, stale = await _resize(rt, namespace, spec, pods, logger)
    views = with_reports(pods, reported, set(failures) | set(unreachable))
    counts = count_pods(views, generation)
    conds = list(status.get("conditions") or [])

    def cond(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type=type_, status=ok, reason=reason, message=message,
                              generation=generation)

    if counts.selected == 0:
        cond("InjectionComplete", True, "NoPods", "no running pod matches spec.selector")
    elif counts.uninjected:
        cond("InjectionComplete", False, "PodsWithoutSidecar",
             f"{len(counts.uninjected)} of {counts.selected} selected pods run without the "
             f"sidecar (label them perfpilot.io/inject=true and recreate): "
             + ", ".join(counts.uninjected[:5]))
    else:
        cond("InjectionComplete", True, "AllInjected",
             f"all {counts.selected} selected pods run the sidecar")
    refused = refusal_condition(refusals or [])
    if refused is not None:
        cond("InjectionComplete", False, *refused)
    if counts.injected == 0:
        cond("ConfigApplied", True, "NoSidecars", "no sidecar to configure yet")
    elif counts.configured < counts.injected:
        cond("ConfigApplied", False, "RollingOut",
             f"{counts.configured}/{counts.injected} sidecars at generation {generation}")
    else:
        cond("ConfigApplied", True, "AllConfigured",
             f"{counts.configured}/{counts.injected} sidecars at generation {generation}")
    if failures:
        cond("Degraded", True, "SidecarsUnreachable",
             f"{len(failures)} sidecar(s) failed Configure: "
             + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())[:3]))
    elif unreachable:
        cond("Degraded", True, "SidecarsUnreachable",
             f"{len(unreachable)} of {counts.injected} sidecar(s) did not answer GetStats "
             f"(their metrics are left out; autoscaling holds without any): "
             + "; ".join(f"{k}: {v}" for k, v in sorted(unreachable.items())[:3]))
    else:
        cond("Degraded", False, "AllHealthy", "every sidecar answered")
    extra: dict[str, Any] = {}
    if outcome is not None:
        for type_, ok, reason, message in outcome.conditions:
            cond(type_, ok, reason, message)
        extra = outcome.status
    ready = all(c["status"] == "True" for c in conds
                if c["type"] in ("InjectionComplete", "ConfigApplied")) and not failures
    cond("Ready", ready, "Reconciled" if ready else "NotReady",
         "profile applied to every selected pod" if ready else "see the other conditions")
    pod_counts = {**counts.as_status(), "stale": len(stale)}
    if stale:
        cond("ResourcesApplied", False, "PodsStale",
             f"{len(stale)} running pod(s) keep old requests/limits "
             + ("(in-place resize refused: " + "; ".join(
                 f"{k}: {v}" for k, v in sorted(stale.items())[:3]) + ")"
                if rt.resize else "(the API server has no pods/resize before 1.33)")
             + "; recreate them (kubectl rollout restart) to apply spec.resources")
    else:
        cond("ResourcesApplied", True, "Applied" if resized == 0 else "ResizedInPlace",
             "every running pod has spec.resources" if resized == 0 else
             f"{resized} running pod(s) resized in place (pods/resize), no restart")
    for state_, n in pod_counts.items():
        prom.PODS.labels(namespace, name, state_).set(n)
    return {"observedGeneration": generation, "pods": pod_counts, "conditions": conds,
            **extra}


async def _resize(rt: Runtime, namespace: str, spec: dict[str, Any], pods: list[PodView],
                  logger: Any) -> tuple[int, dict[str, str]]:
    """Bring running injected pods to spec.resources in place; (resized, stale by pod name)."""
    if not spec.get("resources"):
        return 0, {}
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
            except (TypeError, ValueError):
                pass
            stale[p.name] = detail
    if resized:
        logger.info(f"resized {resized} pod(s) in place to spec.resources")
    if stale:
        logger.warning(f"{len(stale)} pod(s) keep old resources: "
                       + "; ".join(f"{k}: {v}" for k, v in sorted(stale.items())[:3]))
    return resized, stale


async def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, namespace: str, name: str,
                     logger: Any, pods_by_namespace: Any, hpas_by_namespace: Any = None) -> None:
    # The spec handler and the resync timer run concurrently for one profile; one pass at a
    # time, so the second sees what the first applied instead of configuring everyone twice.
    lock = getattr(memo, "pass_lock", None)
    if lock is None:
        lock = memo.pass_lock = asyncio.Lock()
    async with lock:
        await _reconcile_once(body, patch, memo, namespace, name, logger, pods_by_namespace,
                              hpas_by_namespace)


async def _reconcile_once(body: kopf.Body, patch: kopf.Patch, memo: Any, namespace: str,
                          name: str, logger: Any, pods_by_namespace: Any,
                          hpas_by_namespace: Any) -> None:
    rt: Runtime = memo.runtime
    spec = dict(body.get("spec", {}))
    generation = int(body.get("metadata", {}).get("generation", 0))
    if generation < getattr(memo, "seen_generation", 0):
        return      # a stale copy (a timer tick that waited for the lock): newer work is done
    memo.seen_generation = generation
    pods = selected_pods(spec, namespace, pods_by_namespace)
    refusals = refused_pods(spec, namespace, rt.refusals)
    observe = None
    if hpas_by_namespace is not None:
        hpas = list(hpas_by_namespace.get(namespace, []))

        async def observe() -> monitoring.Outcome:
            return await monitoring.observe(rt=rt, memo=memo, body=body, namespace=namespace,
                                            name=name, spec=spec, pods=pods,
                                            hpas=hpas, logger=logger)
    new = await sync(rt=rt, memo=memo, namespace=namespace, name=name, generation=generation,
                     spec=spec, status=dict(body.get("status", {})), pods=pods, logger=logger,
                     observe=observe, refusals=refusals)
    old = dict(body.get("status", {}))
    before = (old.get("pods") or {}).get("uninjected", 0)
    after = (new.get("pods") or {}).get("uninjected", 0)
    if after and after != before:
        # The coverage audit: pods that started before the profile (or while the webhook was
        # down) run without the sidecar; say so where `kubectl describe` shows it.
        cond: dict[str, Any] = next((c for c in new.get("conditions", []) if c["type"] == "InjectionComplete"),
                    {})
        await monitoring.post_event(memo.runtime, body, "Warning", "PodsWithoutSidecar",
                                    cond.get("message", ""), logger)
    await _refusal_event(rt, body, old, new, logger)
    if any(old.get(k) != v for k, v in new.items()):
        patch.status.update(new)


async def _refusal_event(rt: Runtime, body: kopf.Body, old: dict[str, Any], new: dict[str, Any],
                         logger: Any) -> None:
    """A Warning Event when the API server starts refusing the selected pods (or says why
    differently), where `kubectl describe perfprofile` shows it."""
    def refused(status: dict[str, Any]) -> str | None:
        c: dict[str, Any] = next((c for c in status.get("conditions") or []
                                  if c["type"] == "InjectionComplete"), {})
        return str(c.get("message")) if c.get("reason") == "PodsRefused" else None

    message = refused(new)
    if message and message != refused(old):
        await monitoring.post_event(rt, body, "Warning", "PodsRefused", message, logger)


def profile_state(rt: Runtime, namespace: str, name: str) -> Any:
    """The profile's memory (open sidecar channels, stats baselines, alert and scaler state, the pass
    lock), shared by the spec handlers and the resync loop: kopf's per-object memo is not
    reachable from an operator-level task."""
    state = rt.profiles.get((namespace, name))
    if state is None:
        state = rt.profiles[(namespace, name)] = types.SimpleNamespace(runtime=rt)
    return state


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-spec", field="spec")  # type: ignore[arg-type]  # kopf-kwargs
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, namespace: str, name: str,
                    logger: Any, pods_by_namespace: Any, **_: Any) -> None:
    await _reconcile(body, patch, profile_state(memo.runtime, namespace, name), namespace, name,
                     logger, pods_by_namespace)


async def resync_loop(rt: Runtime, settings: kopf.OperatorSettings, profiles_by_namespace: Any,
                      pods_by_namespace: Any, hpas_by_namespace: Any) -> None:
    """The periodic pass over every profile: late pods and recovered sidecars, then stats,
    alerts, autoscaling and the coverage audit.

    One operator-level task instead of a kopf timer per profile: kopf puts a finalizer on every
    object that has a timer, so deleting a profile (or its namespace) would wait for the
    operator; nothing here needs cleanup before a profile goes. Every interval it lists the
    profiles and starts a pass for each one whose previous pass has finished: a slow profile
    (hundreds of sidecars, or unreachable ones waiting out their deadlines) skips a beat
    instead of delaying everyone else's."""
    log = logging.getLogger("perfpilot_operator.resync")
    passes: dict[tuple[str, str], asyncio.Task[None]] = {}
    try:
        while True:
            await asyncio.sleep(rt.settings.resync_interval)
            try:
                items = await rt.kube.list_profiles()
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                log.warning(f"resync: cannot list PerfProfiles: {e}")
                continue
            # Only the profiles this operator serves: kopf's index follows its namespace scope.
            ours = {(ns, p["metadata"]["name"]) for ns, store in list(profiles_by_namespace.items())
                    for p in store}
            items = [i for i in items if _key(i) in ours]
            live = {_key(i) for i in items}
            for key in set(rt.profiles) - live:   # deleted while no delete handler saw it
                _forget(rt, *key)
            for key in [k for k, t in passes.items() if t.done()]:
                del passes[key]
            busy = 0
            for item in items:
                key = _key(item)
                if key in passes:
                    busy += 1       # its previous pass is still running: skip this beat
                    continue
                passes[key] = asyncio.create_task(
                    _resync_one(rt, settings, item, pods_by_namespace, hpas_by_namespace, log),
                    name=f"perfpilot-resync-{key[0]}/{key[1]}")
            log.info(f"resync pass over {len(items)} profile(s) started"
                     + (f" ({busy} still busy from the previous one)" if busy else ""))
    finally:
        for t in passes.values():
            t.cancel()
        await asyncio.gather(*passes.values(), return_exceptions=True)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


async def _resync_one(rt: Runtime, settings: kopf.OperatorSettings, item: dict[str, Any],
                      pods_by_namespace: Any, hpas_by_namespace: Any, log: logging.Logger) -> None:
    meta = item["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return
    body = kopf.Body(cast(kopf.RawBody, item))
    patch = kopf.Patch()
    logger = kopf.LocalObjectLogger(body=body, settings=settings)
    try:
        await _reconcile(body, patch, profile_state(rt, namespace, name), namespace, name,
                         logger, pods_by_namespace, hpas_by_namespace)
        status = patch.get("status")
        if status:
            await rt.kube.patch_profile_status(namespace, name, dict(status))
    except Exception:  # noqa: BLE001 - one profile's failure never stops the others
        log.exception(f"resync of {namespace}/{name} failed; retried in "
                      f"{rt.settings.resync_interval:g}s")


def _forget(rt: Runtime, namespace: str, name: str) -> None:
    rt.profiles.pop((namespace, name), None)
    prom.forget_profile(namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)  # type: ignore[arg-type]  # kopf-kwargs
async def forget(namespace: str, name: str, memo: Any, **_: Any) -> None:
    """Drop the deleted profile's memory and metric series (the resync loop also does it for
    profiles deleted while no handler saw the deletion)."""
    _forget(memo.runtime, namespace, name)
