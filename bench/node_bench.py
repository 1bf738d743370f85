"""Real-node benchmarks: the injected pod as production runs it, on the local cluster's kubelet.

    .venv/bin/python -m bench.node_bench [--quick]     # make bench-node

prints a table and writes bench/results/node.json ({key: {value, unit, baseline, ratio, note}},
ratio = value / baseline, every baseline measured in the same run) and node-meta.json.

* node_pod_ready_s: the example app's pod with the sidecar injected (the pod `inject()` returns,
  i.e. what the webhook admits: native sidecar, startupProbe, restricted securityContext, the
  profile's CRD defaults) from create to Ready. Baseline: the same pod uninjected.
* node_sidecar_ready_s: create -> the sidecar container `started` (its startupProbe saw SERVING)
  with cosine_topk warm, kernels loaded from the image's baked numba cache. Baseline: the same pod
  with NUMBA_CACHE_DIR on its empty /tmp volume (what a sidecar without the baked cache does:
  compile at start).
* node_sidecar_cgroup_mb_idle / _warm / _loaded: the sidecar container's memory cgroup (cgroup v1
  on this node): working set (usage - inactive file) after Ready without warm kernels, after Ready
  with every kernel warm, and the peak (max_usage_in_bytes) during a cosine_topk call on a 100 MB
  matrix sent by the example app through the pod's /dev/shm. Baseline: the memory limit the
  CRD's defaults give the sidecar.

The benchmark runs its own cluster (state e2e/.state-bench-node, PERFPILOT_PORT_BASE + 700), with
the real node, builds/imports the images (cached) and stops the cluster at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Entry, entry, failed_entry, median

if TYPE_CHECKING:
    from kubernetes.client import V1ContainerStatus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OFFSET = 700
UNITS: dict[str, str] = {
    "node_pod_ready_s": "s",
    "node_sidecar_ready_s": "s",
    "node_sidecar_cgroup_mb_idle": "MB",
    "node_sidecar_cgroup_mb_warm": "MB",
    "node_sidecar_cgroup_mb_loaded": "MB",
}
TARGETS: dict[str, tuple[str, str, float] | None] = {
    "node_pod_ready_s": None,
    "node_sidecar_ready_s": ("value", "<=", 3.0),
    "node_sidecar_cgroup_mb_idle": ("ratio", "<", 1.0),
    "node_sidecar_cgroup_mb_warm": ("ratio", "<", 1.0),
    "node_sidecar_cgroup_mb_loaded": ("ratio", "<", 1.0),
}
ALL_KERNELS = ["cosine_topk", "normalize_score", "weighted_mean"]
NS = "node-bench"
Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"[node-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def isolate() -> None:
    """The benchmark's own cluster; call before e2e.harness.cluster is imported."""
    if os.environ.get("PERFPILOT_NODE_BENCH") != "1":
        base = int(os.environ.get("PERFPILOT_PORT_BASE", "0"))
        os.environ["PERFPILOT_PORT_BASE"] = str(base + OFFSET)
        os.environ["PERFPILOT_STATE"] = str(ROOT / "e2e" / ".state-bench-node")
        os.environ["PERFPILOT_NODE_BENCH"] = "1"


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        obj = obj.setdefault(key, {})
    obj[last] = value


class Bench:
    """The cluster, the images on its node, and pod helpers."""

    def __init__(self, log: Log) -> None:
        from kubernetes import client, config

        from e2e.harness import images
        from e2e.harness.cluster import LocalCluster

        self.log = log
        self.cluster = LocalCluster()
        t = time.monotonic()
        self.cluster.up()
        if not self.cluster.with_real_node:
            raise RuntimeError("the cluster runs without its real node (PERFPILOT_REAL_NODE=0)")
        log(f"cluster with real node up in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        self.images = images.build_all(["sidecar", "example-app"])
        for image in self.images.values():
            self.cluster.node.import_image(image.tar)
        log(f"images built/imported in {time.monotonic() - t:.1f}s: "
            f"{', '.join(i.ref for i in self.images.values())}")
        self.cluster.apply_crds()
        self.cluster.kubectl("create", "namespace", NS, check=False)
        config.load_kube_config(str(self.cluster.kubeconfig))
        self.core = client.CoreV1Api()
        self._n = 0

    def close(self) -> None:
        self.cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        self.cluster.down()

    def profile(self, warm: list[str]) -> dict[str, Any]:
        """A PerfProfile created in the cluster and read back: the CRD's defaults applied."""
        self._n += 1
        name = f"bench-{self._n}"
        doc = {"apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"selector": {"matchLabels": {"bench": name}}, "kernels": {"warm": warm}}}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
        return dict(json.loads(self.cluster.kubectl("get", "perfprofile", name, "-n", NS, "-o", "json").stdout))

    def app_pod(self, name: str) -> dict[str, Any]:
        from e2e.harness.node import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION

        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "example"}},
            "spec": {
                "nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION],
                "terminationGracePeriodSeconds": 2,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": self.images["example-app"].ref, "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8000}],
                    "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }

    def injected(self, pod: dict[str, Any], profile: dict[str, Any],
                 extra_env: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
        import datetime as dt

        from perfpilot_operator.certs import CABundle, new_authority
        from perfpilot_operator.logic.injection import SidecarTemplate, inject

        # No operator here: a throwaway CA stands in for its (the sidecar serves its control port
        # with it as a pod of the operator does; nothing calls that port in this bench).
        ca = CABundle((new_authority(dt.datetime.now(dt.UTC)),)).trust_pem().decode()
        tmpl = SidecarTemplate(image=self.images["sidecar"].ref, image_pull_policy="Never",
                               extra_env=extra_env, ca_bundle=ca)
        result = inject(pod, profile, tmpl)
        for dotted, value in result.changes.items():
            _set(pod, dotted, value)
        return pod

    def run_pod(self, pod: dict[str, Any], timeout: float = 240) -> dict[str, float]:
        """Create the pod; seconds from create to the sidecar `started` and to pod Ready."""
        from kubernetes import watch

        name = pod["metadata"]["name"]
        out: dict[str, float] = {}
        w = watch.Watch()
        t0 = time.monotonic()
        # The client's validate_call turns the dict into the V1Pod it is annotated with.
        self.core.create_namespaced_pod(NS, pod)  # type: ignore[arg-type]
        for ev in w.stream(self.core.list_namespaced_pod, NS, field_selector=f"metadata.name={name}",
                           timeout_seconds=int(timeout)):
            st = ev["object"].status
            now = time.monotonic() - t0
            for cs in st.init_container_statuses or []:
                if cs.name == "perfpilot-agent" and cs.started and "sidecar" not in out:
                    out["sidecar"] = now
            for cond in st.conditions or []:
                if cond.type == "Ready" and cond.status == "True":
                    out["ready"] = now
            crashed = [cs.name for cs in (st.init_container_statuses or []) + (st.container_statuses or [])
                       if cs.restart_count >= 2]
            if crashed:
                w.stop()
                logs = self.cluster.kubectl("logs", name, "-n", NS, "-c", crashed[0], "--tail=15", check=False)
                raise RuntimeError(f"pod {name}: container {crashed[0]} restarts: {logs.stdout}{logs.stderr}")
            if "ready" in out:
                w.stop()
        if "ready" not in out:
            raise RuntimeError(f"pod {name} not Ready after {timeout:.0f}s: "
                               f"{self.cluster.kubectl('describe', 'pod', name, '-n', NS, check=False).stdout[-1500:]}")
        return out

    def delete(self, name: str) -> None:
        self.cluster.kubectl("delete", "pod", name, "-n", NS, "--wait=true", "--timeout=60s", check=False)

    def sidecar_status(self, name: str) -> V1ContainerStatus:
        """The sidecar's container status in pod `name` (it runs as a restartable init container)."""
        status = self.core.read_namespaced_pod(name, NS).status
        assert status is not None, f"pod {name} read back without a status"
        return next(c for c in status.init_container_statuses or [] if c.name == "perfpilot-agent")

    def memory_cgroup(self, name: str) -> Path:
        side = self.sidecar_status(name)
        assert side.container_id, f"the sidecar of pod {name} has no container ID (not started)"
        cid = side.container_id.split("://", 1)[1]
        root = Path("/sys/fs/cgroup/memory") / self.cluster.node.cgroup_root.lstrip("/")
        found = [p for p in root.rglob(cid) if p.is_dir()]
        if not found:
            raise RuntimeError(f"no memory cgroup for the sidecar {cid} under {root}")
        return found[0]


class PeakSampler:
    """Polls a memory cgroup's max_usage_in_bytes in a thread (the cgroup vanishes if the
    container is OOM-killed and restarted, so the peak is kept as it is seen)."""

    def __init__(self, cg: Path) -> None:
        self.cg, self.peak_mb = cg, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, int((self.cg / "memory.max_usage_in_bytes").read_text()) / 1e6)
            except OSError:
                return
            self._stop.wait(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def working_set_mb(cg: Path) -> float:
    """usage - inactive file, as the kubelet counts it for eviction and `kubectl top`."""
    usage = int((cg / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (cg / "memory.stat").read_text().splitlines())
    return (usage - int(stat.get("total_inactive_file", 0))) / 1e6


def _limit_mb(pod: dict[str, Any]) -> float:
    from kubernetes.utils import parse_quantity

    sidecar = next(c for c in pod["spec"].get("initContainers", []) if c["name"] == "perfpilot-agent")
    return float(parse_quantity(sidecar["resources"]["limits"]["memory"])) / 1e6


def ready_figures(b: Bench, repeats: int, log: Log) -> dict[str, Entry]:
    """node_pod_ready_s and node_sidecar_ready_s, each with its same-run baseline."""
    res: dict[str, Entry] = {}
    one = b.profile(["cosine_topk"])
    plain_t, inj_t, side_t, cold_t = [], [], [], []
    for i in range(repeats):
        plain = b.run_pod(b.app_pod(f"plain-{i}"))
        b.delete(f"plain-{i}")
        inj = b.run_pod(b.injected(b.app_pod(f"inj-{i}"), one))
        b.delete(f"inj-{i}")
        plain_t.append(round(plain["ready"], 2))
        inj_t.append(round(inj["ready"], 2))
        side_t.append(round(inj["sidecar"], 2))
        log(f"run {i + 1}/{repeats}: plain {plain['ready']:.2f}s, injected {inj['ready']:.2f}s "
            f"(sidecar started {inj['sidecar']:.2f}s)")
    for i in range(max(1, repeats // 3)):
        cold = b.run_pod(b.injected(b.app_pod(f"cold-{i}"), one, (("NUMBA_CACHE_DIR", "/tmp/numba"),)), timeout=400)
        b.delete(f"cold-{i}")
        cold_t.append(round(cold["sidecar"], 2))
        log(f"without the baked cache: sidecar started {cold['sidecar']:.2f}s")
    res["node_pod_ready_s"] = entry(median(inj_t), "s", median(plain_t),
                                    f"median of {repeats}: example-app pod create->Ready with the sidecar injected "
                                    f"(cosine_topk warm, CRD default resources) vs the same pod uninjected; "
                                    f"injected {inj_t}, plain {plain_t}")
    res["node_sidecar_ready_s"] = entry(median(side_t), "s", median(cold_t),
                                        f"create->sidecar started (startupProbe, 1 s period) with cosine_topk warm "
                                        f"from the baked numba cache; baseline without it (compiles at start under "
                                        f"the default CPU limit): baked {side_t}, no cache {cold_t}")
    return res


def _topk(ip: str) -> dict[str, Any]:
    url = f"http://{ip}:8000/topk?mb=100&k=5"
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"GET {url}: {exc.code} {exc.read().decode(errors='replace')[:500]}") from None


def memory_figures(b: Bench, log: Log) -> dict[str, Entry]:
    """The sidecar container's cgroup memory idle / warm / under the 100 MB call, vs its limit."""
    res: dict[str, Entry] = {}
    idle_pod = b.injected(b.app_pod("idle"), b.profile([]))
    limit = _limit_mb(idle_pod)
    b.run_pod(idle_pod)
    time.sleep(2)
    idle = working_set_mb(b.memory_cgroup("idle"))
    b.delete("idle")
    warm_pod = b.injected(b.app_pod("warm"), b.profile(ALL_KERNELS))
    times = b.run_pod(warm_pod)
    time.sleep(2)
    cg = b.memory_cgroup("warm")
    warm = working_set_mb(cg)
    (cg / "memory.max_usage_in_bytes").write_text("0")
    status = b.core.read_namespaced_pod("warm", NS).status
    ip = status.pod_ip if status else None
    assert ip, "pod warm is Ready, so it has an IP"
    peak, error, seconds = 0.0, "", []
    for _ in range(3):
        with PeakSampler(cg) as sampler:
            try:
                reply = _topk(ip)
            except RuntimeError as exc:
                error = str(exc)[:300]
        peak = max(peak, sampler.peak_mb)
        if error:
            break
        if not reply.get("shared_memory"):
            raise RuntimeError(f"the 100 MB call did not use shared memory: {reply}")
        seconds.append(reply["seconds"])
    side = b.sidecar_status("warm")
    killed = side.last_state.terminated.reason if side.last_state and side.last_state.terminated else "none"
    b.delete("warm")
    log(f"sidecar memory: idle {idle:.0f} MB, warm {warm:.0f} MB, 100 MB call peak {peak:.0f} MB "
        f"(limit {limit:.0f} MB; restarts {side.restart_count}, last termination {killed}; all-warm sidecar "
        f"started {times['sidecar']:.1f}s){'; call failed: ' + error if error else ''}")
    note = f"baseline: the sidecar's memory limit from the CRD defaults ({limit:.0f} MB)"
    res["node_sidecar_cgroup_mb_idle"] = entry(idle, "MB", limit, f"working set after Ready, no warm kernels; {note}")
    res["node_sidecar_cgroup_mb_warm"] = entry(warm, "MB", limit, f"working set after Ready, all kernels warm; {note}")
    outcome = (f"THE CALL FAILED ({error}); sidecar restarts {side.restart_count}, last termination {killed}"
               if error else f"{seconds} s per call, restarts {side.restart_count}")
    res["node_sidecar_cgroup_mb_loaded"] = entry(
        peak, "MB", limit, f"peak cgroup usage (max_usage_in_bytes, sampled every 20 ms) during cosine_topk calls "
        f"on a 100 MB matrix sent through /dev/shm: {outcome}; {note}")
    return res


PARTS = {"ready": ("node_pod_ready_s", "node_sidecar_ready_s"),
         "memory": ("node_sidecar_cgroup_mb_idle", "node_sidecar_cgroup_mb_warm", "node_sidecar_cgroup_mb_loaded")}


def run(quick: bool, log: Log = _print, parts: tuple[str, ...] = tuple(PARTS)) -> dict[str, Entry]:
    """The node figures of `parts`; a figure that cannot be measured gets a NOT MEASURED entry."""
    isolate()
    try:
        b = Bench(log)
    except Exception as e:  # noqa: BLE001 - every key still reported
        why = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"cannot run: {why}")
        return {k: failed_entry(UNITS[k], why) for part in parts for k in PARTS[part]}
    results: dict[str, Entry] = {}
    try:
        for part in parts:
            try:
                results.update(ready_figures(b, 3 if quick else 5, log) if part == "ready" else memory_figures(b, log))
            except Exception as e:  # noqa: BLE001 - the other part still runs; its keys say why
                why = f"{type(e).__name__}: {str(e)[:400]}"
                log(f"{part} figures failed: {why}")
                results.update({k: failed_entry(UNITS[k], why) for k in PARTS[part]})
    finally:
        b.close()
    return results


def _json_safe(results: dict[str, Entry]) -> dict[str, Any]:
    return {k: {f: (None if isinstance(v, float) and not math.isfinite(v) else v) for f, v in e.items()}
            for k, e in results.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.node_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 pods per figure instead of 5")
    ap.add_argument("--part", choices=sorted(PARTS), action="append",
                    help="only these figures (repeatable; default all)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line (bench.run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ns = ap.parse_args(argv)
    t0, load = time.monotonic(), os.getloadavg()
    results = run(ns.quick, parts=tuple(ns.part or PARTS))
    if ns.json:
        print(json.dumps(_json_safe(results)), flush=True)
        return 0
    wall = time.monotonic() - t0
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.part:   # a partial run merges into the last complete one
        old = json.loads((ns.out / "node.json").read_text()) if (ns.out / "node.json").exists() else {}
        results = {**old, **results}
    (ns.out / "node.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    meta = {"mode": "quick" if ns.quick else "full", "wall_seconds": round(wall, 1),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(),
            "loadavg_before": " ".join(f"{x:.2f}" for x in load),
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    (ns.out / "node-meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for k, e in results.items():
        print(f"  {k:<32} {e['value']!s:>10} {e['unit']:<3} baseline {e['baseline']!s:>10}  ratio {e['ratio']}")
    print(f"wall time {wall:.1f}s; wrote {ns.out / 'node.json'}")
    return 0 if all(isinstance(e["value"], float) and math.isfinite(e["value"]) for e in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
