"""The coverage audit's I/O: which workload owns each uninjected pod, and the optional watchdog
that restarts Deployments whose opted-in pods run without the sidecar (PERFPILOT_RECREATE_UNINJECTED,
off by default: restarting a workload is the owner's call unless the cluster admin delegates it).
"""

from __future__ import annotations

import time
from typing import Any

import kopf
from perfpilot_contract.durations import format_ns, seconds_to_ns

from perfpilot_operator.logic import coverage
from perfpilot_operator.logic.conditions import PodView
from perfpilot_operator.monitoring import post_event
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.state import ProfileState


def uninjected(rt: Runtime, namespace: str, pods: list[PodView]) -> list[coverage.Uninjected]:
    """The selected running pods without the sidecar, each with its top controller (a
    ReplicaSet's owner from kopf's index of ReplicaSets: no read per pass)."""
    out = []
    for p in pods:
        if not p.running or p.injected:
            continue
        rs_owner = None
        if p.owner is not None and p.owner[0] == "ReplicaSet" and rt.replicaset_owners is not None:
            rs_owner = next(iter(rt.replicaset_owners.get((namespace, p.owner[1]), [])), None)
        out.append(coverage.Uninjected(p.name, p.opted_in,
                                       coverage.workload(p.owner, rs_owner, p.template_hash)))
    return out


async def watchdog(rt: Runtime, state: ProfileState, body: kopf.Body,
                   pods: list[coverage.Uninjected], logger: Any) -> list[str]:
    """Restart (as `kubectl rollout restart` does) the Deployments due; an Event on the profile
    for each. Returns the Deployments restarted."""
    if not rt.settings.recreate_uninjected:
        return []
    every = rt.settings.recreate_interval
    namespace = body["metadata"]["namespace"]
    now = time.monotonic()
    done = []
    for name in coverage.watchdog_due(pods, state.restarted, now, every):
        names = sorted(p.pod for p in pods if p.workload == ("Deployment", name))
        state.restarted[name] = now      # also on failure: a refused patch is not retried at once
        try:
            await rt.kube.restart_deployment(namespace, name)
        except Exception as e:  # noqa: BLE001 - reported, retried after the interval
            logger.warning(f"watchdog: cannot restart Deployment {name}: {e}")
            await post_event(rt, body, "Warning", "RestartFailed",
                             f"cannot restart Deployment {name} to re-create its pods without "
                             f"the sidecar ({', '.join(names[:5])}): {e}", logger)
            continue
        done.append(name)
        logger.info(f"watchdog: restarted Deployment {name} ({len(names)} pod(s) without the "
                    f"sidecar)")
        await post_event(rt, body, "Normal", "RestartedUninjected",
                         f"restarted Deployment {name} (as kubectl rollout restart) to re-create "
                         f"{len(names)} pod(s) running without the sidecar: "
                         f"{', '.join(names[:5])}; PERFPILOT_RECREATE_UNINJECTED is on, at most "
                         f"once per {format_ns(seconds_to_ns(every))} per Deployment", logger)
    return done
