"""The monitoring half of a resync pass: read the sidecars' stats, merge them into the profile's
metrics, advance its alerts and autoscale its target.

Three steps, each returning data (`compose_status` in logic/status turns it into status): stats
(GetStats), alerts (Events on transitions, the PrometheusRule) and scaling (the scale
subresource). The decisions are pure functions (logic/stats, logic/monitor, logic/scaling); this
module does the I/O around them and keeps their state in the profile's MonitorState.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from perfpilot_operator import metrics as prom
from perfpilot_operator.clients.agents import Target, bounded_gather
from perfpilot_operator.logic import monitor as mon
from perfpilot_operator.logic import prometheusrule as promrule
from perfpilot_operator.logic import stats
from perfpilot_operator.logic.alerting import Transition
from perfpilot_operator.logic.conditions import PodView, now_iso
from perfpilot_operator.logic.scaling import Decision, ScalerState, decide
from perfpilot_operator.logic.sharedcache import shared_cache_condition
from perfpilot_operator.logic.status import Cond, Observed
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.state import MonitorState, resume

__all__ = ["MonitorState", "Observed", "observe", "post_event", "resume"]


def _iso(ts: float) -> str:
    return now_iso(dt.datetime.fromtimestamp(ts, dt.UTC))


async def post_event(rt: Runtime, body: Any, type_: str, reason: str, message: str,
                     logger: Any) -> None:
    """A Kubernetes Event on the profile; a failure to post is logged, never fails the pass."""
    try:
        await rt.kube.post_event(body, type_=type_, reason=reason, message=message)
    except Exception as e:  # noqa: BLE001 - events are best effort, as kopf's own
        logger.warning(f"could not post Event {reason}: {e}")


@dataclass(frozen=True)
class Stats:
    """One GetStats round: the profile's metric values, who did not answer, and the
    generation each answering sidecar reports running."""

    values: dict[str, float]
    unreachable: dict[str, str]
    generations: dict[str, int]
    # pod name -> its sidecar's shared cache tier report (perfpilot.v1.SharedCacheStats).
    shared: dict[str, Any] = field(default_factory=dict)


async def read_stats(rt: Runtime, state: MonitorState, pods: list[PodView],
                     target: Callable[[PodView], Target], spec: dict[str, Any],
                     namespace: str, name: str) -> Stats:
    """Deltas since the previous round from every reachable sidecar, merged into metrics."""
    live = [p for p in pods if p.running and p.injected and p.ip]

    def call(p: PodView) -> Any:
        return lambda: rt.agents.get_stats(target(p))

    looked = time.monotonic()
    since_last_look = None if state.last_look is None else looked - state.last_look
    state.last_look = looked
    results = await bounded_gather([call(p) for p in live], limit=rt.settings.rollout_concurrency)
    deltas, failures, generations, shared = [], {}, {}, {}
    keys = set()
    for p, r in zip(live, results):
        key = f"{p.name}@{p.ip}"
        keys.add(key)
        code = prom.rpc_result(r)
        prom.GETSTATS_CALLS.labels(namespace, name, code).inc()
        if isinstance(r, BaseException):
            failures[p.name] = code
            continue
        generations[p.name] = int(r.generation)
        shared[p.name] = r.shared_cache
        snap = stats.from_proto(r)
        prev = state.snapshots.get(key)
        deltas.append(stats.delta(prev, snap) if prev is not None
                      else stats.first_sight(snap, since_last_look=since_last_look))
        state.snapshots[key] = snap
    for gone in set(state.snapshots) - keys:
        del state.snapshots[gone]
    values = stats.profile_metrics(deltas, memory_limit_bytes=mon.sidecar_memory_limit(spec))
    for metric, value in values.items():
        prom.set_or_clear(prom.PROFILE_METRIC, (namespace, name, metric), value)
    return Stats(values, failures, generations, shared)


async def advance_alerts(rt: Runtime, state: MonitorState, body: kopf.Body, spec: dict[str, Any],
                         values: dict[str, float], now: float, logger: Any
                         ) -> tuple[list[dict[str, Any]], Cond]:
    """status.activeAlerts and the Alerting condition; Events on transitions."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    rules = mon.alert_rules(spec)
    state.alerts, changes = mon.advance_alerts(rules, state.alerts, values, now)
    for ch in changes:
        shown = f"{ch.value:g}" if ch.value is not None else "n/a"
        text = f"{ch.rule.metric} = {shown} {ch.rule.op} {ch.rule.threshold:g}"
        if ch.transition is Transition.FIRED:
            await post_event(rt, body, "Warning", "AlertFiring",
                             f"{ch.rule.name} ({ch.rule.severity}) firing: {text}", logger)
        elif ch.transition is Transition.RESOLVED:
            await post_event(rt, body, "Normal", "AlertResolved",
                             f"{ch.rule.name} resolved: {ch.rule.metric} = {shown}", logger)
        elif ch.transition is Transition.PENDING:
            await post_event(rt, body, "Normal", "AlertPending",
                             f"{ch.rule.name} pending for {ch.rule.for_seconds:g}s: {text}", logger)
    active = mon.active_alerts(rules, state.alerts, _iso)
    prom.clear_profile(prom.ALERT_ACTIVE, namespace, name)
    for a in active:
        prom.ALERT_ACTIVE.labels(namespace, name, a["name"], a["severity"], a["state"]).set(1)
    await _sync_prometheus_rule(rt, state, body, rules, logger)
    firing = [a for a in active if a["state"] == "firing"]
    if firing:
        return active, Cond("Alerting", True, "AlertsFiring",
                            "; ".join(f"{a['name']}: {a.get('message', '')}" for a in firing))
    pending = [a["name"] for a in active]
    return active, Cond("Alerting", False, "NoAlertsFiring",
                        f"pending: {', '.join(pending)}" if pending else "no alert firing")


async def observe(*, rt: Runtime, state: MonitorState, body: kopf.Body, spec: dict[str, Any],
                  pods: list[PodView], target: Callable[[PodView], Target],
                  hpas: list[dict[str, Any]], logger: Any) -> Observed:
    """Stats, then alerts, then autoscaling; what they add to status, as data."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    now = time.time()
    read = await read_stats(rt, state, pods, target, spec, namespace, name)
    active, alerting = await advance_alerts(rt, state, body, spec, read.values, now, logger)
    status: dict[str, Any] = {"activeAlerts": active}
    conditions = [alerting]
    tier = shared_cache_condition(read.shared)
    if tier is not None:        # only profiles with spec.cache.shared get the condition
        conditions.append(Cond(*tier))
    auto = mon.autoscaling(spec)
    if auto is None:
        state.scaler = ScalerState()
        state.replicas = None
        if spec.get("autoscaling"):
            conditions.append(Cond("ScalingActive", False, "NoTarget",
                                   "spec.autoscaling needs spec.target (the workload to scale)"))
    else:
        replicas, cond = await _autoscale(rt, state, auto, namespace, name, read.values, hpas,
                                          now, body, logger, missing=len(read.unreachable))
        if replicas is not None:
            status["replicas"] = replicas
        if cond is not None:
            conditions.append(cond)
    return Observed(unreachable=read.unreachable, generations=read.generations, status=status,
                    conditions=tuple(conditions))


PROMETHEUS_RULES_RECHECK = 60.0


async def _sync_prometheus_rule(rt: Runtime, state: MonitorState, body: kopf.Body,
                                rules: list[Any], logger: Any) -> None:
    """Keep the profile's PrometheusRule equal to its alerts, where the CRD exists. Failures are
    logged, never fatal: the operator's own alerting does not depend on it."""
    now = time.monotonic()
    if rt.prometheus_rules_checked is None or (
            not rt.prometheus_rules and now - rt.prometheus_rules_checked > PROMETHEUS_RULES_RECHECK):
        rt.prometheus_rules_checked = now
        try:
            rt.prometheus_rules = await rt.kube.prometheus_rules_available()
        except Exception as e:  # noqa: BLE001
            logger.warning(f"cannot discover monitoring.coreos.com/v1: {e}")
            rt.prometheus_rules = False
    if not rt.prometheus_rules:
        return
    meta = body.get("metadata", {})
    try:
        if not rules:
            if state.rule_synced is not False:
                await rt.kube.delete_prometheus_rule(meta["namespace"],
                                                     promrule.rule_name(meta["name"]))
                state.rule_synced = False
            return
        obj = promrule.render(dict(body), rules)
        if state.rule_synced == obj["spec"]:
            return
        result = await rt.kube.apply_prometheus_rule(obj)
        state.rule_synced = obj["spec"]
        if result != "unchanged":
            logger.info(f"PrometheusRule {obj['metadata']['name']} {result}")
    except Exception as e:  # noqa: BLE001
        if getattr(e, "status", None) == 403 and "being terminated" in str(getattr(e, "body", "")):
            return      # the namespace is going away with the profile: nothing to keep in sync
        logger.warning(f"PrometheusRule sync failed: {e}")


async def _autoscale(rt: Runtime, state: MonitorState, auto: mon.Autoscaling, namespace: str,
                     name: str, values: dict[str, float], hpas: list[dict[str, Any]],
                     now: float, body: kopf.Body, logger: Any, missing: int = 0
                     ) -> tuple[dict[str, Any] | None, Cond | None]:
    ref = auto.target_ref
    owner = next((h["name"] for h in hpas
                  if h["target"].get("kind") == ref.get("kind")
                  and h["target"].get("name") == ref.get("name")), None)
    if owner:
        return state.replicas, Cond("ScalingActive", False, "HPAConflict",
                                f"HorizontalPodAutoscaler {owner!r} also scales "
                                f"{ref['kind']}/{ref['name']}; delete it or spec.autoscaling")
    if now - state.last_scale_eval < auto.interval and state.replicas is not None:
        return state.replicas, None      # not due: keep the last decision's status
    state.last_scale_eval = now
    try:
        current = await rt.scale.replicas(namespace, ref)
    except Exception as e:  # noqa: BLE001 - reported on the condition
        reason = getattr(e, "reason", None) or type(e).__name__
        return state.replicas, Cond("ScalingActive", False, "TargetUnreadable",
                                f"cannot read the scale of {ref['kind']}/{ref['name']}: {reason}")
    metric = values.get(auto.metric, math.nan)
    decision: Decision = decide(state.scaler, now=now, current=current, metric=metric,
                                spec=auto.spec, missing=missing)
    if decision.changes(current):
        try:
            await rt.scale.set_replicas(namespace, ref, decision.replicas)
        except Exception as e:  # noqa: BLE001
            reason = getattr(e, "reason", None) or type(e).__name__
            return state.replicas, Cond("ScalingActive", False, "ScaleFailed",
                                    f"cannot scale {ref['kind']}/{ref['name']}: {reason}")
        state.last_scale_time = _iso(now)
        direction = "up" if decision.replicas > current else "down"
        prom.SCALE_EVENTS.labels(namespace, name, direction).inc()
        await post_event(rt, body, "Normal", "Scaled",
                         f"{ref['kind']}/{ref['name']} {current} -> {decision.replicas}: "
                         f"{decision.message}", logger)
        logger.info(f"scaled {ref['kind']}/{ref['name']} {current} -> {decision.replicas}")
    prom.REPLICAS.labels(namespace, name, "current").set(current)
    prom.REPLICAS.labels(namespace, name, "desired").set(decision.replicas)
    state.replicas = {"current": current, "desired": decision.replicas,
                      "reason": decision.message[:1000]}
    if state.last_scale_time:
        state.replicas["lastScaleTime"] = state.last_scale_time
    return state.replicas, Cond("ScalingActive", decision.scaling_active, decision.reason,
                            decision.message)
