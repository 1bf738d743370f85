"""The scale benchmark's breach -> scale step (`scale_breach_to_step_s`): one profile's app
latency breaches its autoscaling target, among 100 profiles' pods and then alone, until the
Deployment's next size. Run by bench/scale_bench.py."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.common import Entry, entry, median
from bench.scale_bench import operator_log, resync_ticks

if TYPE_CHECKING:
    from e2e.harness.scale import Scale, ScaleSpec


class ReplicasWatch(threading.Thread):
    """A watch on one Deployment: (arrival time (unix), spec.replicas) of every event; the
    first arrival of a new size is when the scale step reached the API server's watchers."""

    def __init__(self, sc: Scale, namespace: str, name: str) -> None:
        super().__init__(daemon=True, name="replicas-watch")
        self.sc, self.namespace, self.name = sc, namespace, name
        self.seen: list[tuple[float, int]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        from kubernetes import watch

        apps, sel = self.sc.apps, f"metadata.name={self.name}"
        rv = apps.list_namespaced_deployment(self.namespace, field_selector=sel).metadata
        assert rv is not None, "the API server sets a list's metadata (its resourceVersion)"
        self.ready.set()
        w = watch.Watch()
        while not self.stopping.is_set():
            for ev in w.stream(apps.list_namespaced_deployment, self.namespace,
                               field_selector=sel, resource_version=rv.resource_version,
                               timeout_seconds=60):
                self.seen.append((time.time(), int(ev["object"].spec.replicas)))
                rv = ev["object"].metadata
                if self.stopping.is_set():
                    w.stop()
                    return

    def first(self, replicas: int, since: float) -> float:
        return next((t for t, r in self.seen if r == replicas and t >= since), math.nan)


BREACH_S, CALM_S, TARGET_S = 0.2, 0.001, 0.05     # app latency p99: breaching, calm, the target


def autoscaling_patch(name: str, low: int, high: int) -> dict[str, Any]:
    """spec.target and spec.autoscaling on app_latency_p99_seconds: one pod per step up at
    once; down only after an hour (so each breach steps up from where the last one left it)."""
    return {"spec": {"target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "autoscaling": {"minReplicas": low, "maxReplicas": high,
                                     "metric": "app_latency_p99_seconds", "target": TARGET_S,
                                     "interval": "1s",
                                     "scaleUp": {"stabilizationWindow": "0s", "maxStep": 1},
                                     "scaleDown": {"stabilizationWindow": "1h",
                                                   "maxStep": 1}}}}


def deployment_replicas(sc: Scale, ns: str, name: str) -> int:
    """The Deployment's size from its scale subresource (the API server omits replicas: 0)."""
    spec = sc.apps.read_namespaced_deployment_scale(name, ns).spec
    return (spec.replicas if spec else None) or 0


def breach_trials(sc: Scale, target: tuple[str, str], trials: int, resync: float,
                  log: Callable[[str], None]) -> list[tuple[float, float]]:
    """`trials` breaches of one profile's app latency (its fleet agents report BREACH_S against
    a TARGET_S autoscaling target), each until the Deployment's next size: per trial, (seconds
    from the breach's first recorded batch to the new size on a watch, seconds from the first
    resync tick after the breach to it). Between trials the latency is calm for 3-4 resyncs
    (a random phase against the ticks)."""
    import random

    from e2e.harness.scale import GROUP, PLURAL, VERSION

    ns, name = target
    key = f"{ns}/{name}"

    def replicas() -> int:
        return deployment_replicas(sc, ns, name)

    # Room for two steps a breach: the pass after the calm comes back still sees the breach's
    # tail (its window since the previous look) and may step once more.
    low = replicas()
    sc.set_app_latency({target: CALM_S})
    sc.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                             autoscaling_patch(name, low, low + 2 * trials + 1))
    time.sleep(2.5 * resync)         # the scaler has seen the calm metric
    w = ReplicasWatch(sc, ns, name)
    w.start()
    w.ready.wait(30)
    out = []
    for k in range(trials):
        time.sleep(random.uniform(0, resync))
        want = replicas() + 1
        t_set = time.time()
        sc.set_app_latency({target: BREACH_S})
        deadline = time.monotonic() + 60 + 4 * resync
        while math.isnan(w.first(want, t_set)) and time.monotonic() < deadline:
            sc.check_processes()
            time.sleep(0.2)
        t_step = w.first(want, t_set)
        fed = [t for t, what, d, _ in sc.fleet_records(since=t_set)
               if what == "latency" and d == key]
        if math.isnan(t_step) or not fed:
            raise TimeoutError(f"{key}: no scale step to {want} replicas within "
                               f"{60 + 4 * resync:.0f}s of the breach ({len(fed)} breach "
                               f"records)")
        tick = next((t for t in resync_ticks(operator_log(sc)) if t >= fed[0]), math.nan)
        out.append((t_step - fed[0], t_step - tick))
        log(f"breach {k + 1}/{trials} of {key}: scale step to {want} replicas "
            f"{out[-1][0]:.2f}s after the breach ({out[-1][1]:.2f}s after the next resync tick)")
        sc.set_app_latency({target: CALM_S})
        time.sleep(3 * resync)       # the breach's tail has left every pass's window
    w.stopping.set()
    sc.set_app_latency({})
    return out


def restore(sc: Scale, spec: ScaleSpec, target: tuple[str, str], log: Callable[[str], None]) -> None:
    """The scenario as the breaches found it: no autoscaling, every Deployment at
    spec.replicas, every profile configured (later phases count on it)."""
    from e2e.harness.scale import GROUP, PLURAL, VERSION

    sc.custom.patch_namespaced_custom_object(GROUP, VERSION, target[0], PLURAL, target[1],
                                             {"spec": {"autoscaling": None, "target": None}})
    sc.scale_to(spec.replicas)
    t = sc.wait_configured(spec.replicas, timeout=600,
                           what="every Deployment back at its size after the breaches")
    log(f"the scenario restored after the breaches in {t:.0f}s")


def breach_entry(sc: Scale, spec: ScaleSpec, trials: int, log: Callable[[str], None]) -> Entry:
    """scale_breach_to_step_s: among every profile's pods, then with the others scaled to 0."""
    from e2e.harness.procs import wait_until

    resync = float(spec.resync.rstrip("s"))
    target = spec.targets()[-1]      # a fleet profile (the sample ones run full sidecars)
    among = breach_trials(sc, target, trials, resync, log)
    others = [t for t in spec.targets() if t != target]
    t = time.monotonic()
    sc.scale_to(0, others)
    names = [spec.namespace(i) for i in range(spec.namespaces)]
    current = deployment_replicas(sc, *target)
    wait_until(lambda: sc.count_pods("perfpilot.io/inject=true", names) <= current,
               f"the other {len(others)} profiles' pods gone", 600, 2.0)
    log(f"the other {len(others)} profiles' pods gone after {time.monotonic() - t:.0f}s")
    time.sleep(3 * resync)
    alone = breach_trials(sc, target, trials, resync, log)
    restore(sc, spec, target, log)
    v, b = [x for x, _ in among], [x for x, _ in alone]
    return entry(
        median(v), "s", median(b),
        f"one profile ({target[0]}/{target[1]}) among {spec.profiles} with {spec.injected} "
        f"injected pods: its fleet agents start reporting an app latency of "
        f"{BREACH_S * 1000:g} ms (RecordTimings batches every 0.1 s) against an "
        f"autoscaling target of app_latency_p99_seconds {TARGET_S:g} (maxStep 1 up, "
        f"stabilization 0 s); seconds from the first breaching batch (fleet record) to the "
        f"Deployment's new size arriving on a watch, median of {len(v)} breaches: "
        f"{', '.join(f'{x:.2f}' for x in v)} s; of which after the first resync tick that "
        f"followed the breach: {', '.join(f'{x:.2f}' for _, x in among)} s. baseline: the same "
        f"breaches of the same profile after the other {spec.profiles - 1} Deployments were "
        f"scaled to 0 (their profiles kept, no sidecars): "
        f"{', '.join(f'{x:.2f}' for x in b)} s (after the tick: "
        f"{', '.join(f'{x:.2f}' for _, x in alone)} s). The operator reads metrics once per "
        f"resync ({spec.resync}): a breach waits 0..{spec.resync} for the next pass (random "
        f"phase per breach), then that profile's turn in the pass and the scale PATCH.")
