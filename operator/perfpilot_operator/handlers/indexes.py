"""In-memory indexes kopf keeps current from watches; handlers read them instead of listing.

Pods and ReplicaSets are watched with a server-side `labelSelector` (kopf's
`settings.watching.label_selectors`, set by `filter_watches` at start-up): only opted-in ones
reach the operator. A handler's `labels=` filter would not do: kopf applies it on the client side,
after every pod event of the cluster has been sent, decoded and given a worker. Selected pods that
never opted in (the coverage audit's finds) come from a slower, server-side filtered LIST per
profile (`CoveredPods.audit`), merged into the same namespace -> [(labels, PodView)] shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import kopf
from kubernetes import client

from perfpilot_operator.logic.conditions import PodView, Refusal, refusal
from perfpilot_operator.logic.injection import ANNOTATION_INJECTED, OPT_IN_LABEL, is_injected
from perfpilot_operator.logic.selectors import WATCH_SELECTOR, audit_query

log = logging.getLogger("perfpilot_operator.pods")

Entry = tuple[dict[str, str], PodView]


def filter_watches(settings: kopf.OperatorSettings) -> None:
    """Server-side filters for the pod and ReplicaSet watches (opted-in objects only; a
    Deployment's ReplicaSets carry its pod template's labels)."""
    settings.watching.label_selectors["v1", "pods"] = WATCH_SELECTOR
    settings.watching.label_selectors["apps", "v1", "replicasets"] = WATCH_SELECTOR


@kopf.index("perfpilot.io", "v1alpha1", "perfprofiles")  # type: ignore[arg-type]  # kopf-kwargs
def profiles_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any
                          ) -> dict[str, dict[str, Any]]:
    meta = body.get("metadata", {})
    # Everything a resync pass reads (it walks this index instead of listing the profiles):
    # the identity its Events and PrometheusRule owner reference need, spec, status.
    return {namespace: {"apiVersion": body.get("apiVersion", "perfpilot.io/v1alpha1"),
                        "kind": body.get("kind", "PerfProfile"),
                        "metadata": {"name": name, "namespace": namespace,
                                     "uid": meta.get("uid", ""),
                                     "resourceVersion": meta.get("resourceVersion", ""),
                                     "generation": meta.get("generation", 0),
                                     "creationTimestamp": meta.get("creationTimestamp", ""),
                                     "deletionTimestamp": meta.get("deletionTimestamp")},
                        "spec": dict(body.get("spec", {})),
                        "status": dict(body.get("status") or {})}}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")  # type: ignore[arg-type]  # kopf-kwargs
def hpas_by_namespace(namespace: str, name: str, spec: kopf.Spec, **_: Any
                      ) -> dict[str, dict[str, Any]]:
    return {namespace: {"name": name, "target": dict(spec.get("scaleTargetRef", {}))}}


def pod_entry(namespace: str, name: str, pod: dict[str, Any]) -> Entry:
    """What a profile pass needs of one pod (the index holds one per pod, nothing more)."""
    meta, status, spec = pod.get("metadata", {}), pod.get("status") or {}, pod.get("spec") or {}
    shape = {"spec": {section: [{"name": c.get("name"), "resources": dict(c.get("resources") or {})}
                                for c in spec.get(section) or []]
                      for section in ("containers", "initContainers")}}
    view = PodView(
        name=name,
        ip=status.get("podIP"),
        running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
        injected=is_injected(pod)
        and (meta.get("annotations") or {}).get(ANNOTATION_INJECTED) == "true",
        shape=shape,
        owner=next(((o.get("kind", ""), o.get("name", "")) for o in meta.get("ownerReferences") or []
                    if o.get("controller")), None),
        opted_in=(meta.get("labels") or {}).get(OPT_IN_LABEL) == "true",
        template_hash=(meta.get("labels") or {}).get("pod-template-hash"),
    )
    return dict(meta.get("labels") or {}), view


@kopf.index("pods")  # type: ignore[arg-type]  # kopf-kwargs
def pods_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any
                      ) -> dict[str, Entry]:
    return {namespace: pod_entry(namespace, name, dict(body))}


class CoveredPods(Mapping[str, list[Entry]]):
    """namespace -> [(labels, PodView)]: kopf's index of opted-in pods plus, per profile, the
    selected pods that did not opt in (the coverage audit's LIST). Read on the event loop; the
    audit's results are swapped in whole under a lock (the LIST runs in a thread)."""

    def __init__(self, watched: Any, api: client.ApiClient | None) -> None:
        self.watched = watched            # kopf.Index[str, Entry]
        self.core = client.CoreV1Api(api) if api is not None else None
        self._lock = threading.Lock()
        self._audited: dict[tuple[str, str], dict[str, Entry]] = {}     # (ns, profile) -> pods
        self._due: dict[tuple[str, str], tuple[str, float]] = {}        # -> (query, next time)
        self.audits = 0        # audit LISTs made (logs, the scale benchmark)

    def __getitem__(self, namespace: str) -> list[Entry]:
        merged = {view.name: (labels, view) for labels, view in self.watched.get(namespace, [])}
        with self._lock:
            for (ns, _), pods in self._audited.items():
                if ns == namespace:
                    for name, e in pods.items():
                        merged.setdefault(name, e)     # the watch's copy is fresher
        if not merged:
            raise KeyError(namespace)
        return list(merged.values())

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            keys = set(self.watched) | {ns for ns, _ in self._audited}
        return iter(sorted(keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @staticmethod
    def targets(profiles_by_namespace: Any) -> dict[tuple[str, str], str]:
        """(namespace, profile) -> the audit's labelSelector, for every profile kopf indexed."""
        out: dict[tuple[str, str], str] = {}
        for ns, store in list(profiles_by_namespace.items()):
            for p in store:
                try:
                    out[(ns, p["metadata"]["name"])] = audit_query(
                        p.get("spec", {}).get("selector", {}))
                except ValueError:
                    continue        # refused by the CRD; nothing to audit
        return out

    async def audit(self, profiles_by_namespace: Any, interval: float,
                    wanted: Callable[[str, str], bool] = lambda ns, name: True) -> int:
        """LIST (server-side filtered) the selected pods without the opt-in label, for each
        `wanted` profile (sharded: this replica's share) that is new, whose selector changed,
        or whose last audit is `interval` old. Returns how many LISTs it made."""
        targets = {k: q for k, q in self.targets(profiles_by_namespace).items() if wanted(*k)}
        now = time.monotonic()
        with self._lock:
            for key in set(self._audited) - set(targets):
                del self._audited[key]
            for key in set(self._due) - set(targets):
                del self._due[key]
        made = 0
        for key, query in targets.items():
            prev = self._due.get(key)
            if self.core is None or (prev is not None and prev[0] == query and prev[1] > now):
                continue
            try:
                out = await asyncio.to_thread(
                    self.core.list_namespaced_pod, key[0], label_selector=query,
                    _request_timeout=30, _preload_content=False)
            except Exception as e:  # noqa: BLE001 - retried at the next tick
                log.warning(f"coverage audit of {key[0]}/{key[1]} ({query}): {e}")
                continue
            # Raw JSON, not the client's model classes: a fraction of the CPU per pod.
            items = json.loads(cast(Any, out).data).get("items", [])
            found = {i["metadata"]["name"]: pod_entry(key[0], i["metadata"]["name"], i)
                     for i in items}
            with self._lock:
                self._audited[key] = found
                self._due[key] = (query, time.monotonic() + interval)
            made += 1
        self.audits += made
        return made


async def audit_loop(pods: CoveredPods, profiles_by_namespace: Any, *, tick: float,
                     interval: float, wanted: Callable[[str, str], bool]) -> None:
    """Every `tick`, audit the `wanted` profiles that are due (see CoveredPods.audit)."""
    while True:
        try:
            await pods.audit(profiles_by_namespace, interval, wanted)
        except Exception:  # noqa: BLE001 - the next tick tries again
            log.exception("coverage audit failed")
        await asyncio.sleep(tick)


@kopf.index("apps", "v1", "replicasets")  # type: ignore[arg-type]  # kopf-kwargs
def refusals_by_namespace(namespace: str, body: kopf.Body, **_: Any
                          ) -> dict[str, Refusal]:
    """ReplicaSets whose pods the API server refuses (Pod Security, quotas, webhooks): the pods
    never exist, so only the ReplicaSet's ReplicaFailure condition tells a profile about them.
    `{}`, not None, when it stops refusing: kopf keeps an object's previous entry on None."""
    found = refusal(dict(body))
    return {namespace: found} if found is not None else {}


@kopf.index("apps", "v1", "replicasets")  # type: ignore[arg-type]  # kopf-kwargs
def replicaset_owners(namespace: str, name: str, body: kopf.Body, **_: Any
                      ) -> dict[tuple[str, str], tuple[str, str]]:
    """(namespace, ReplicaSet) -> its controller ("Deployment", name): the coverage audit names
    the workload to restart without reading ReplicaSets (the watch above is shared)."""
    owner = next(((o.get("kind", ""), o.get("name", ""))
                  for o in body.get("metadata", {}).get("ownerReferences") or []
                  if o.get("controller")), None)
    return {(namespace, name): owner} if owner is not None else {}
