"""The scale scenario on the local control plane, shared by `make bench-scale` (bench/scale_bench.py)
and the smaller e2e run (e2e/test_scale.py): no second copy of the harness.

What it builds: kwok nodes enough for the pods (`pods_per_node` each, loopback pod CIDRs);
`namespaces` x `profiles_per_namespace` PerfProfiles, each selecting one Deployment of opted-in
pods (`perfpilot.io/inject=true`); `other_pods` bare pods in other namespaces that no profile
selects (bound to nodes directly: the scheduler is not what is measured). Injected pods get a real
gRPC endpoint on their pod IP: the agent fleet (e2e/harness/fleet.py) hosts real agents for pods
labelled `perfpilot.io/host=fleet`, and the pod runner starts full sidecar processes for the
sample Deployment (`sample_deployments`, the first ones), which lacks that label.

The operator runs as its own user (`perfpilot-operator`, a client certificate; cluster-admin by a
ClusterRoleBinding) so that the API server's own metrics can tell its requests apart: a
FlowSchema of that name routes them, and `apiserver_flowcontrol_dispatched_requests_total
{flow_schema="perfpilot-operator"}` counts them.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import urllib3

from e2e.harness import dev
from e2e.harness.cluster import NODE_COUNT, LocalCluster
from e2e.harness.fleet import FLEET_LABEL
from e2e.harness.kubeapi import create_pod_raw
from e2e.harness.pki import issue_client_cert
from e2e.harness.procs import wait_until

OPERATOR_USER = "perfpilot-operator"
SCALE_LABEL = "perfpilot.io/scale"          # on every namespace the scenario creates
GROUP, VERSION, PLURAL = "perfpilot.io", "v1alpha1", "perfprofiles"
OPERATOR, PODRUNNER, FLEET = "scale-operator", "scale-podrunner", "scale-fleet"

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class ScaleSpec:
    namespaces: int = 10
    profiles_per_namespace: int = 10
    replicas: int = 10
    other_pods: int = 10_000
    other_namespaces: int = 20
    sample_deployments: int = 1         # their pods run full sidecar processes
    pods_per_node: int = 250            # a node's pod CIDR is a /24
    resync: str = "5s"                  # the operator's default
    prefix: str = "scale"

    @property
    def profiles(self) -> int:
        return self.namespaces * self.profiles_per_namespace

    @property
    def injected(self) -> int:
        return self.profiles * self.replicas

    def nodes(self) -> int:
        """The cluster's two default nodes (110 pods each) plus room for every pod with a
        quarter spare on nodes of `pods_per_node` (the scheduler spreads; other pods are bound
        round-robin to the added nodes only, never beyond a node's capacity)."""
        return 2 + math.ceil((self.injected + self.other_pods) * 1.25 / self.pods_per_node)

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-pp-{i}"

    def other_namespace(self, i: int) -> str:
        return f"{self.prefix}-other-{i}"

    def targets(self) -> list[tuple[str, str]]:
        """(namespace, name) of every profile; each selects the Deployment of the same name."""
        return [(self.namespace(i), f"app-{j}") for i in range(self.namespaces)
                for j in range(self.profiles_per_namespace)]


def profile_doc(name: str, max_entries: int = 1000) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PerfProfile",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     # heartbeat-only agents (no kernel pool), as the fleet hosts them
                     "pools": {"processWorkers": 0, "maxQueue": 100},
                     "cache": {"ttl": "5m", "maxEntries": max_entries}}}


def deployment_doc(name: str, replicas: int, fleet: bool) -> dict[str, Any]:
    labels = {"app": name, "perfpilot.io/inject": "true"}
    if fleet:
        labels[FLEET_LABEL] = "fleet"
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app",
                                                           "image": "example.invalid/app:1"}]}}}}


def other_pod(name: str, node: str, gated: bool = False, inject: bool = False) -> dict[str, Any]:
    """A pod no profile selects (bound to `node`), or, `gated`, one that is never scheduled."""
    labels = {"app": "other", "perfpilot.io/inject": "true"} if inject else {"app": "other"}
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
    if gated:
        spec["schedulingGates"] = [{"name": "perfpilot.io/bench"}]
    else:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": spec}


def flow_schema() -> dict[str, Any]:
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": OPERATOR_USER},
        "spec": {"matchingPrecedence": 900,
                 "priorityLevelConfiguration": {"name": "workload-high"},
                 "distinguisherMethod": {"type": "ByUser"},
                 "rules": [{"subjects": [{"kind": "User", "user": {"name": OPERATOR_USER}}],
                            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"],
                                               "resources": ["*"], "namespaces": ["*"],
                                               "clusterScope": True}],
                            "nonResourceRules": [{"verbs": ["*"],
                                                  "nonResourceURLs": ["*"]}]}]}}


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of the metric `name` in a Prometheus exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        m = re.match(r"[^{]+\{(.*)\}\s+(\S+)", line)
        if m is not None:
            yield dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), float(m.group(2))


def parse_counter(text: str, name: str, labels: dict[str, str]) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    return sum(v for found, v in samples(text, name)
               if all(found.get(k) == want for k, want in labels.items()))


def parse_histogram(text: str, name: str, labels: dict[str, str]) -> dict[float, float]:
    """Cumulative counts by upper bound (`le`) of a Prometheus histogram's `<name>_bucket`
    samples whose labels include `labels`, summed over the other labels."""
    out: dict[float, float] = {}
    for found, v in samples(text, name + "_bucket"):
        if "le" in found and all(found.get(k) == want for k, want in labels.items()):
            le = float(found["le"])     # "+Inf" parses as inf
            out[le] = out.get(le, 0.0) + v
    return out


class Scale:
    """The scenario's objects and processes on one LocalCluster; `close()` removes both."""

    def __init__(self, cluster: LocalCluster, spec: ScaleSpec, log: Log = _print, *,
                 ports: tuple[int, int, int] | None = None) -> None:
        """`ports`: webhook, health and metrics ports of the operator `start_operator` runs
        (None: the caller runs the operator, as the e2e suite does)."""
        from kubernetes import client, config

        self.cluster, self.spec, self.log = cluster, spec, log
        self.ports = ports
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.procs: dict[str, Any] = {}
        self.record = cluster.state / "scale-fleet.record"
        self.load = cluster.state / "scale-fleet.load"     # the fleet's app latencies (--load)

    # ---------------------------------------------------------------- cluster preparation
    def prepare(self) -> None:
        """Nodes, the CRDs, the operator's identity and its FlowSchema."""
        n = self.spec.nodes()
        t = time.monotonic()
        self.cluster.ensure_kwok_nodes(n, self.spec.pods_per_node)
        self.log(f"{n} kwok nodes Ready ({self.spec.pods_per_node} pods each) in "
                 f"{time.monotonic() - t:.1f}s")
        self.cluster.apply_crds()
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "List", "items": [
                flow_schema(),
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": OPERATOR_USER},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "cluster-admin"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                               "name": OPERATOR_USER}]}]}))

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig for the operator's own user (not system:masters, which APF exempts)."""
        out = self.cluster.state / "scale-operator"
        crt, key = issue_client_cert(self.cluster.pki, user=OPERATOR_USER, groups=[],
                                     out_dir=out)
        text = self.cluster.kubeconfig.read_text()
        text = (text.replace(str(self.cluster.pki.admin_crt), str(crt))
                .replace(str(self.cluster.pki.admin_key), str(key)))
        path = out / "kubeconfig"
        path.write_text(text)
        return path

    # ---------------------------------------------------------------- processes
    def start_operator(self, name: str = OPERATOR, ports: tuple[int, int, int] | None = None,
                       extra_env: dict[str, str] | None = None) -> None:
        """An operator replica under the operator's own user (`ports`: webhook, health,
        metrics; default: the Scale's)."""
        ports = ports or self.ports
        assert ports is not None, "Scale(ports=...) runs an operator"
        webhook, health, metrics = ports
        env = dev.operator_env(self.cluster, webhook_port=webhook, health_port=health,
                               metrics_port=metrics, resync=self.spec.resync)
        env["KUBECONFIG"] = str(self.operator_kubeconfig())
        env.update(extra_env or {})
        dev.stop(self.cluster, name)
        self.procs[name] = op = dev.start(self.cluster, name, dev.operator_command(), env)
        dev.wait_healthy(self.cluster, op, health)

    def stop_operator(self, name: str = OPERATOR) -> None:
        """SIGTERM (a clean stop: its Leases are released) and wait."""
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(timeout=60)
        dev.stop(self.cluster, name)

    def start_agents(self, podrunner: bool = True) -> None:
        """The fleet (and, unless the caller runs its own, a pod runner for the sample)."""
        self.record.unlink(missing_ok=True)
        self.load.unlink(missing_ok=True)
        names = [FLEET] + ([PODRUNNER] if podrunner else [])
        for name in names:
            dev.stop(self.cluster, name)
        self.procs[FLEET] = dev.start(self.cluster, FLEET,
                                      dev.fleet_command(self.record, self.load), {})
        if podrunner:
            self.procs[PODRUNNER] = dev.start(self.cluster, PODRUNNER, dev.podrunner_command(),
                                              {})

    def check_processes(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}); see "
                                   f"{self.cluster.logs / (name + '.log')}")

    def operator_pid(self, name: str = OPERATOR) -> int:
        return int(self.procs[name].pid)

    # ---------------------------------------------------------------- objects
    def _create_namespaces(self, names: Iterable[str]) -> None:
        items = [{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": n, "labels": {SCALE_LABEL: self.spec.prefix}}}
                 for n in names]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": items}))
        def has_default_sa(ns: str) -> bool:
            return self.cluster.kubectl("get", "sa", "default", "-n", ns,
                                        check=False).returncode == 0
        for n in names:
            wait_until(partial(has_default_sa, n),
                       f"namespace {n}'s default ServiceAccount", 60, 0.2)

    def create_profiles(self, replicas: int) -> None:
        """Every namespace, PerfProfile and Deployment (`replicas` each)."""
        s = self.spec
        self._create_namespaces([s.namespace(i) for i in range(s.namespaces)])
        sample = set(s.targets()[:s.sample_deployments])
        for i in range(s.namespaces):
            ns = s.namespace(i)
            docs = []
            for j in range(s.profiles_per_namespace):
                name = f"app-{j}"
                docs += [profile_doc(name),
                         deployment_doc(name, replicas, fleet=(ns, name) not in sample)]
            self.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": docs}), timeout=120)
        self.log(f"{s.profiles} PerfProfiles and Deployments ({replicas} replicas) in "
                 f"{s.namespaces} namespaces")

    def scale_to(self, replicas: int, targets: list[tuple[str, str]] | None = None) -> float:
        """Patch every Deployment's (or `targets`') replicas at once; returns the wall time of
        the first patch."""
        t0 = time.time()
        body = {"spec": {"replicas": replicas}}
        self._parallel([partial(self.apps.patch_namespaced_deployment_scale, n, ns, body)
                        for ns, n in (self.spec.targets() if targets is None else targets)])
        return t0

    def patch_profiles(self, targets: list[tuple[str, str]], max_entries: int) -> float:
        """A spec change (cache.maxEntries) to each profile, all at once; returns the wall time
        just before the first patch."""
        t0 = time.time()
        body = {"spec": {"cache": {"maxEntries": max_entries}}}
        self._parallel([partial(self.custom.patch_namespaced_custom_object,
                                GROUP, VERSION, ns, PLURAL, n, body) for ns, n in targets])
        return t0

    def create_other_pods(self, count: int | None = None, threads: int = 16) -> float:
        """`other_pods` bare pods across `other_namespaces`, bound round-robin to the kwok
        nodes; returns creates per second. Progress every 1,000."""
        s = self.spec
        count = s.other_pods if count is None else count
        namespaces = [s.other_namespace(i) for i in range(s.other_namespaces)]
        self._create_namespaces(namespaces)
        nodes = [f"kwok-node-{i}" for i in range(2, s.nodes())]
        done = [0]
        lock = threading.Lock()
        t0 = time.monotonic()

        def create(i: int) -> None:
            ns = namespaces[i % len(namespaces)]
            body = other_pod(f"other-{i}", nodes[i % len(nodes)])
            create_pod_raw(self.core, ns, body)
            with lock:
                done[0] += 1
                if done[0] % 1000 == 0 or done[0] == count:
                    dt = time.monotonic() - t0
                    self.log(f"other pods: {done[0]}/{count} created ({done[0] / dt:.0f}/s, "
                             f"load {os.getloadavg()[0]:.1f})")

        self._parallel([partial(create, i) for i in range(count)], threads=threads)
        return count / (time.monotonic() - t0)

    def _parallel(self, calls: list[Callable[[], Any]], threads: int = 16) -> None:
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(c) for c in calls]:
                f.result()

    # ---------------------------------------------------------------- reading
    def count_running(self, selector: str, namespaces: list[str] | None = None) -> int:
        """Running pods matching `selector` (in `namespaces`, or anywhere), via raw JSON."""
        return self.count_pods(selector, namespaces, running=True)

    def count_pods(self, selector: str, namespaces: list[str] | None = None, *,
                   running: bool = False) -> int:
        """Pods matching `selector` (in `namespaces`, or anywhere), not being deleted, and
        (`running`) Running, via raw JSON."""
        total = 0
        for ns in namespaces or (None,):
            cont = None
            while True:
                kw: dict[str, Any] = {"label_selector": selector, "limit": 2000,
                                      "_preload_content": False}
                if cont:
                    kw["_continue"] = cont
                # _preload_content=False: the raw urllib3 response, not the annotated V1PodList.
                out = cast(urllib3.BaseHTTPResponse, self.core.list_namespaced_pod(ns, **kw) if ns
                           else self.core.list_pod_for_all_namespaces(**kw))
                data = json.loads(out.data)
                total += sum(1 for p in data["items"]
                             if (not running or (p.get("status") or {}).get("phase") == "Running")
                             and not p["metadata"].get("deletionTimestamp"))
                cont = data["metadata"].get("continue")
                if not cont:
                    break
        return total

    def statuses(self) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for i in range(self.spec.namespaces):
            ns = self.spec.namespace(i)
            items = cast(dict[str, Any],
                         self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
            for p in items["items"]:
                out[(ns, p["metadata"]["name"])] = p
        return out

    def all_configured(self, replicas: int, generation: int | None = None) -> tuple[bool, str]:
        """Every profile reports `replicas` pods injected and configured (read back from the
        sidecars) at its generation (or `generation`), none uninjected."""
        sts = self.statuses()
        bad = []
        for key, p in sts.items():
            st = p.get("status") or {}
            pods = st.get("pods") or {}
            gen = generation or p["metadata"]["generation"]
            if not (st.get("observedGeneration") == gen and pods.get("injected") == replicas
                    and pods.get("configured") == replicas and pods.get("uninjected") == 0):
                bad.append(f"{key[0]}/{key[1]}: {pods} at {st.get('observedGeneration')}")
        if len(sts) < self.spec.profiles:
            bad.append(f"only {len(sts)} of {self.spec.profiles} profiles")
        return not bad, f"{len(bad)} not yet: " + "; ".join(bad[:3])

    def wait_configured(self, replicas: int, generation: int | None = None, *,
                        timeout: float, what: str) -> float:
        """Seconds until all_configured(); checks our processes on the way, logs what is
        missing every 15 s, and on timeout says which profiles are behind and why."""
        t0 = time.monotonic()
        last_log, why = t0, ""
        while time.monotonic() - t0 < timeout:
            ok, why = self.all_configured(replicas, generation)
            if ok:
                return time.monotonic() - t0
            self.check_processes()
            if time.monotonic() - last_log > 15:
                self.log(f"waiting for {what}: {why}")
                last_log = time.monotonic()
            time.sleep(1.0)
        raise TimeoutError(f"{what}: not within {timeout:.0f}s; {why} (agent fleet log: "
                           f"{self.cluster.logs / (FLEET + '.log')})")

    def apiserver_metrics(self) -> str:
        return self.cluster._get(f"{self.cluster.server}/metrics", timeout=30)

    def operator_requests(self) -> float:
        """Requests the API server dispatched for the operator's user (APF, its FlowSchema)."""
        return parse_counter(self.apiserver_metrics(),
                             "apiserver_flowcontrol_dispatched_requests_total",
                             {"flow_schema": OPERATOR_USER})

    def set_app_latency(self, latencies: dict[tuple[str, str], float]) -> None:
        """Make the fleet's agents of these Deployments ((namespace, name) -> seconds) report that
        app latency from now on (every 0.1 s); {} stops the traffic."""
        tmp = self.load.with_suffix(".tmp")
        tmp.write_text(json.dumps({f"{ns}/{n}": v for (ns, n), v in latencies.items()}))
        tmp.replace(self.load)

    def operator_metrics(self) -> str:
        """The exposition of the (default) operator `start_operator` runs."""
        assert self.ports is not None, "Scale(ports=...) runs an operator"
        return self.cluster._get(f"http://127.0.0.1:{self.ports[2]}/metrics", timeout=10)

    def fleet_records(self, since: float = 0.0) -> list[tuple[float, str, str, int]]:
        """(unix time, configure|stats, namespace/pod, generation) lines of the fleet's record."""
        out = []
        try:
            text = self.record.read_text()
        except OSError:
            return []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and float(parts[0]) >= since:
                out.append((float(parts[0]), parts[1], parts[2], int(parts[3])))
        return out

    # ---------------------------------------------------------------- teardown
    def close(self, timeout: float = 600) -> None:
        """Stop our processes, then delete every namespace the scenario created."""
        ran_operator = any(name.startswith(OPERATOR) for name in self.procs)
        for name in list(self.procs):     # operator replicas, the fleet, the pod runner
            dev.stop(self.cluster, name)
        self.procs.clear()
        c = self.cluster
        if not c.is_up():
            return
        if ran_operator:        # its webhook configurations point at a port nobody serves now
            for kind, name in (("mutatingwebhookconfiguration", "perfpilot-pod-injector"),
                               ("validatingwebhookconfiguration", "perfpilot-profile-validator")):
                c.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        names = c.kubectl("get", "ns", "-l", f"{SCALE_LABEL}={self.spec.prefix}", "-o", "name",
                          check=False).stdout.split()
        if names:
            self.log(f"deleting {len(names)} namespaces (their pods go with them)")
            c.kubectl("delete", *names, "--wait=false", check=False, timeout=120)
            try:
                wait_until(lambda: not c.kubectl("get", "ns", "-l",
                                                 f"{SCALE_LABEL}={self.spec.prefix}", "-o",
                                                 "name", check=False).stdout.split(),
                           "the scenario's namespaces to go", timeout, 2.0)
            except TimeoutError as e:
                self.log(f"{e} (left to the namespace controller)")
                return
        # The nodes it added go too: later tests' pods must not land on them (kwok, flooded by
        # the scenario, may let them go NotReady and their pods be evicted and replaced).
        extra = [n for n in c.kubectl("get", "nodes", "-l", "type=kwok", "-o",
                                      "jsonpath={.items[*].metadata.name}",
                                      check=False).stdout.split()
                 if n.rsplit("-", 1)[-1].isdigit() and int(n.rsplit("-", 1)[-1]) >= NODE_COUNT]
        if extra:
            self.log(f"deleting the {len(extra)} kwok nodes it added")
            c.kubectl("delete", "node", *extra, "--wait=false", check=False, timeout=120)

