"""The kopf layer of a PerfProfile's reconciliation: which handlers run a pass, and the periodic
resync loop over every profile. What one pass does is perfpilot_operator/profilepass.py.

Level-triggered: the same pass runs on create/resume, on every spec change (at once) and in the
operator-level resync loop (late pods, recovered sidecars, stats, alerts, autoscaling, coverage).
The resync walks kopf's profiles index (kept current by a watch), not a LIST per pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf

from perfpilot_operator import metrics as prom
from perfpilot_operator import profilepass
from perfpilot_operator.logic.conditions import PodView, Refusal
from perfpilot_operator.logic.injection import selector_matches
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.state import ProfileState

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


async def _reconcile(rt: Runtime, body: kopf.Body, patch: kopf.Patch, state: ProfileState,
                     logger: Any, pods_by_namespace: Any, hpas_by_namespace: Any = None) -> None:
    """One pass at a time per profile (the spec handler and the resync loop run concurrently),
    so the second sees what the first applied instead of configuring everyone twice."""
    async with state.lock:
        await _reconcile_once(rt, body, patch, state, logger, pods_by_namespace,
                              hpas_by_namespace)


async def _reconcile_once(rt: Runtime, body: kopf.Body, patch: kopf.Patch, state: ProfileState,
                          logger: Any, pods_by_namespace: Any, hpas_by_namespace: Any) -> None:
    meta = body.get("metadata", {})
    namespace = meta["namespace"]
    spec = dict(body.get("spec", {}))
    generation = int(meta.get("generation", 0))
    if generation < state.seen_generation:
        return      # a stale copy (a timer tick that waited for the lock): newer work is done
    state.seen_generation = generation
    resource_version = str(meta.get("resourceVersion", ""))
    previous = state.previous_status(resource_version, dict(body.get("status") or {}))
    hpas = (list(hpas_by_namespace.get(namespace, []))
            if hpas_by_namespace is not None else None)
    new = await profilepass.run(rt=rt, state=state, body=body, previous=previous,
                                pods=selected_pods(spec, namespace, pods_by_namespace),
                                refusals=refused_pods(spec, namespace, rt.refusals), hpas=hpas,
                                logger=logger)
    if any(previous.get(k) != v for k, v in new.items()):
        patch.status.update(new)


def profile_state(rt: Runtime, namespace: str, name: str) -> ProfileState:
    """The profile's memory, shared by the spec handlers and the resync loop: kopf's
    per-object memo is not reachable from an operator-level task."""
    state = rt.profiles.get((namespace, name))
    if state is None:
        state = rt.profiles[(namespace, name)] = ProfileState()
    return state


@kopf.on.event(GROUP, VERSION, PLURAL, id="reconcile-spec")  # type: ignore[arg-type]  # kopf-kwargs
async def reconcile(event: kopf.RawEvent, body: kopf.Body, memo: Any, namespace: str, name: str,
                    **_: Any) -> None:
    """A new generation of a profile, applied at once - by the leader only.

    A watch-event handler, not kopf's on.create/on.update: those make kopf write progress and
    diff-base annotations on every replica; an event handler writes nothing, so a replica that
    does not lead touches no profile. The leader's resync loop (started when it is elected)
    reconciles every profile anyway, so an event missed during a leader change is not lost."""
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is None or rt.leadership is None:
        return
    if event.get("type") == "DELETED":
        forget_profile_state(rt, namespace, name)
        return
    if not rt.acts_for(namespace, name):
        return      # another replica leads, or owns this profile (PERFPILOT_SHARDING)
    state = profile_state(rt, namespace, name)
    generation = int(body.get("metadata", {}).get("generation", 0))
    if generation <= getattr(state, "seen_generation", 0):
        return      # status/metadata writes (ours included), or a generation already applied
    # kopf passes its settings to activity handlers only: the startup handler kept them.
    await _resync_one(rt, rt.kopf_settings, dict(body), rt.pods, None,
                      logging.getLogger("perfpilot_operator.profiles"))


async def resync_loop(rt: Runtime, settings: kopf.OperatorSettings, profiles_by_namespace: Any,
                      pods_by_namespace: Any, hpas_by_namespace: Any) -> None:
    """The periodic pass over every profile: late pods and recovered sidecars, then stats,
    alerts, autoscaling and the coverage audit.

    One operator-level task instead of a kopf timer per profile: kopf puts a finalizer on every
    object that has a timer, so deleting a profile (or its namespace) would wait for the
    operator; nothing here needs cleanup before a profile goes."""
    log = logging.getLogger("perfpilot_operator.resync")
    passes: dict[tuple[str, str], asyncio.Task[None]] = {}
    try:
        while True:
            await asyncio.sleep(rt.settings.resync_interval)
            resync_beat(rt, settings, passes, profiles_by_namespace, pods_by_namespace,
                        hpas_by_namespace, log)
    finally:
        for t in passes.values():
            t.cancel()
        await asyncio.gather(*passes.values(), return_exceptions=True)


def resync_beat(rt: Runtime, settings: kopf.OperatorSettings,
                passes: dict[tuple[str, str], asyncio.Task[None]], profiles_by_namespace: Any,
                pods_by_namespace: Any, hpas_by_namespace: Any, log: logging.Logger) -> None:
    """Start a pass for every profile in kopf's index whose previous pass has finished: a slow
    profile (hundreds of sidecars, or unreachable ones waiting out their deadlines) skips a
    beat instead of delaying everyone else's. The index is the watch's copy of every profile
    (spec and status): no LIST per beat, and only the profiles this operator serves."""
    items = {(ns, p["metadata"]["name"]): p
             for ns, store in list(profiles_by_namespace.items()) for p in list(store)}
    for key in set(rt.profiles) - set(items):   # deleted while no delete handler saw it
        forget_profile_state(rt, *key)
    for key in [k for k, t in passes.items() if t.done()]:
        del passes[key]
    # Sharded: only this replica's share (a profile it stopped owning: its pass is cancelled
    # and its memory and channels go; the new owner reads everything back).
    items = {key: item for key, item in items.items() if _acts(rt, key, passes)}
    prom.PROFILES_OWNED.labels(rt.leadership.identity if rt.leadership else "").set(len(items))
    busy = 0
    for key, item in sorted(items.items()):
        if key in passes:
            busy += 1       # its previous pass is still running: skip this beat
            continue
        passes[key] = asyncio.create_task(
            _resync_one(rt, settings, item, pods_by_namespace, hpas_by_namespace, log),
            name=f"perfpilot-resync-{key[0]}/{key[1]}")
    log.info(f"resync pass over {len(items)} profile(s) started"
             + (f" ({busy} still busy from the previous one)" if busy else ""))


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
        await _reconcile(rt, body, patch, profile_state(rt, namespace, name), logger,
                         pods_by_namespace, hpas_by_namespace)
        status = patch.get("status")
        if status:
            await rt.kube.patch_profile_status(namespace, name, dict(status))
            # Until the watch delivers it, the index holds the status before this patch: the
            # next pass compares with what was written (not after a failed patch: it retries).
            state = profile_state(rt, namespace, name)
            state.written = (str(meta.get("resourceVersion", "")), dict(status))
    except Exception:  # noqa: BLE001 - one profile's failure never stops the others
        log.exception(f"resync of {namespace}/{name} failed; retried in "
                      f"{rt.settings.resync_interval:g}s")


def _acts(rt: Runtime, key: tuple[str, str], passes: dict[tuple[str, str], asyncio.Task[None]]
          ) -> bool:
    if rt.acts_for(*key):
        return True
    task = passes.pop(key, None)
    if task is not None:
        task.cancel()
    state = rt.profiles.get(key)
    if state is not None:
        forget_profile_state(rt, *key)
        for address in state.addresses:       # channels are most of a profile's memory
            asyncio.get_running_loop().create_task(rt.agents.forget(address))
    return False


def forget_profile_state(rt: Runtime, namespace: str, name: str) -> None:
    """Drop a profile's memory and metric series: when it is deleted (the watch event, or the
    resync loop for deletions nobody saw), and for every profile when this replica stops
    leading (the next leader exports them)."""
    rt.profiles.pop((namespace, name), None)
    prom.forget_profile(namespace, name)
