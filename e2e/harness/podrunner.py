"""The pod runner: real sidecar processes for the pods kwok pretends to run.

kwok reports pods Running but runs nothing. For every Running pod that carries the injected
perfpilot sidecar, this starts the sidecar container's own command with its own env (fieldRefs
and secretKeyRefs resolved against the API server), bound to the pod's 127.x IP, so the
operator talks to real sidecars over the network. Volume mounts are mapped to per-pod
directories under the state dir (two pods must not share /var/run/perfpilot). The process is
stopped when the pod goes away.

    python -m e2e.harness.podrunner            # runs until SIGTERM
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.harness.cluster import ROOT, STATE, LocalCluster
from e2e.harness.node import REAL_NODE_NAME

SIDECAR_NAME = "perfpilot-agent"
INJECTED = "perfpilot.io/injected"


def _log(msg: str) -> None:
    print(f"[podrunner {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class RunningSidecar:
    uid: str
    key: str              # namespace/name
    ip: str
    proc: subprocess.Popen[bytes]
    root: Path            # per-pod directory holding the mapped volumes and the log


def sidecar_spec(pod: dict[str, Any]) -> dict[str, Any] | None:
    spec = pod.get("spec", {})
    containers: list[dict[str, Any]] = spec.get("initContainers", []) + spec.get("containers", [])
    for c in containers:
        if c.get("name") == SIDECAR_NAME:
            return c
    return None


def resolve_env(container: dict[str, Any], pod: dict[str, Any],
                read_secret: Any) -> dict[str, str]:
    """Container env as the kubelet would hand it to the process."""
    out: dict[str, str] = {}
    for e in container.get("env", []):
        name = e["name"]
        if "value" in e:
            out[name] = e["value"]
            continue
        src = e.get("valueFrom", {})
        if "fieldRef" in src:
            value = field_value(pod, src["fieldRef"]["fieldPath"])
            if value is not None:
                out[name] = value
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            value = read_secret(pod["metadata"]["namespace"], ref["name"], ref["key"])
            if value is not None:
                out[name] = value
            elif not ref.get("optional"):
                raise LookupError(f"secret {ref['name']}/{ref['key']} not found")
    return out


def field_value(pod: dict[str, Any], path: str) -> str | None:
    """A downward-API fieldPath: `a.b.c`, or `metadata.annotations['key']` / labels."""
    m = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", path)
    if m:
        value = (pod.get("metadata", {}).get(m[1]) or {}).get(m[2])
        return value if isinstance(value, str) else None
    node: Any = pod
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, str) else None


def write_downward_volumes(pod: dict[str, Any], container: dict[str, Any], root: Path) -> None:
    """Like the kubelet: each downwardAPI volume the container mounts becomes files (the
    operator's CA certificate reaches the sidecar this way, from the pod's annotation)."""
    volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        api = volumes.get(mount["name"], {}).get("downwardAPI")
        if api is None:
            continue
        base = root / mount["mountPath"].lstrip("/")
        base.mkdir(parents=True, exist_ok=True)
        for item in api.get("items", []):
            value = field_value(pod, item.get("fieldRef", {}).get("fieldPath", ""))
            (base / item["path"]).write_text(value or "")


def map_paths(env: dict[str, str], container: dict[str, Any], root: Path) -> dict[str, str]:
    """Rewrite values under a volume mount path to the pod's own directory."""
    mounts = sorted((m["mountPath"] for m in container.get("volumeMounts", [])),
                    key=len, reverse=True)
    mapped = {}
    for k, v in env.items():
        for mp in mounts:
            if v == mp or v.startswith(mp.rstrip("/") + "/"):
                v = str(root / mp.lstrip("/")) + v[len(mp):]
                break
        mapped[k] = v
    for mp in mounts:
        (root / mp.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return mapped


def short_volumes_root(cluster: LocalCluster, kind: str) -> Path:
    """Where pods' mapped volumes live: a short path under the temp dir, unique per state dir.

    A Unix socket path must fit in 107 bytes (the sidecar refuses more than 100), and the
    checkout (hence the state dir) may sit anywhere, e.g. /check/work/main/e2e/.state-test."""
    digest = hashlib.blake2b(str(cluster.state.resolve()).encode(), digest_size=4).hexdigest()
    return Path(tempfile.gettempdir()) / f"pp-{kind}-{digest}"


class PodRunner:
    """Keeps one sidecar process per Running injected pod."""

    def __init__(self, cluster: LocalCluster, *, python_bin: Path | None = None) -> None:
        self.cluster = cluster
        self.bin = python_bin or Path(sys.executable).parent
        self.root = cluster.state / "pods"
        self.volumes_root = short_volumes_root(cluster, "pods")
        self.running: dict[str, RunningSidecar] = {}
        self._stop = threading.Event()
        self._waiting: set[str] = set()
        from kubernetes import client, config  # only the runner needs the API client

        self._api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self._core = client.CoreV1Api(self._api_client)

    def read_secret(self, namespace: str, name: str, key: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            data = self._core.read_namespaced_secret(name, namespace).data or {}
        except ApiException:
            return None
        return base64.b64decode(data[key]).decode() if key in data else None

    def start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        container = sidecar_spec(pod)
        ip = pod.get("status", {}).get("podIP")
        if container is None or not ip:
            return
        key = f"{meta['namespace']}/{meta['name']}"
        root = self.root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        root.mkdir(parents=True, exist_ok=True)
        # Volumes live under a short path (short_volumes_root); `root/volumes` points there.
        volumes = self.volumes_root / meta["uid"][:12]
        volumes.mkdir(parents=True, exist_ok=True)
        link = root / "volumes"
        if not link.is_symlink():
            link.symlink_to(volumes, target_is_directory=True)
        try:
            env = map_paths(resolve_env(container, pod, self.read_secret), container, volumes)
            write_downward_volumes(pod, container, volumes)
        except LookupError as e:
            # Like a kubelet: the container waits (CreateContainerConfigError) until it exists.
            if key not in self._waiting:
                _log(f"{key}: waiting: {e}")
                self._waiting.add(key)
            return
        self._waiting.discard(key)
        cmd = [*container.get("command", []), *container.get("args", [])]
        if cmd and not os.path.isabs(cmd[0]) and (self.bin / cmd[0]).exists():
            cmd[0] = str(self.bin / cmd[0])   # the venv's console script stands in for the image
        log = (root / "sidecar.log").open("ab")
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=root)
        (root / "sidecar.pid").write_text(f"{proc.pid}\n")
        self.running[meta["uid"]] = RunningSidecar(meta["uid"], key, ip, proc, root)
        _log(f"started sidecar for {key} on {ip} (pid {proc.pid})")

    def stop(self, uid: str, *, reason: str = "pod deleted") -> None:
        sc = self.running.pop(uid, None)
        if sc is None:
            return
        if sc.proc.poll() is None:
            sc.proc.send_signal(signal.SIGTERM)
            try:
                sc.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sc.proc.kill()
                sc.proc.wait()
        _log(f"stopped sidecar for {sc.key} ({reason}, exit {sc.proc.returncode})")
        shutil.rmtree((sc.root / "volumes").resolve(), ignore_errors=True)
        shutil.rmtree(sc.root, ignore_errors=True)

    def sync(self) -> None:
        """One level-triggered pass: start what should run, stop what should not."""
        try:
            # Pods the agent fleet hosts (e2e/harness/fleet.py) are left out by the API server.
            pods = self._core.list_pod_for_all_namespaces(
                label_selector="perfpilot.io/profile,perfpilot.io/host!=fleet",
                _request_timeout=10)
        except Exception as e:  # the API server restarting must not kill the runner
            _log(f"listing pods failed: {e}")
            return
        wanted: dict[str, dict[str, Any]] = {}
        for pod in self._api_client.sanitize_for_serialization(pods)["items"]:
            meta, status = pod["metadata"], pod.get("status", {})
            if (meta.get("annotations", {}).get(INJECTED) == "true"
                    and status.get("phase") == "Running" and status.get("podIP")
                    and not meta.get("deletionTimestamp")
                    # The real node's kubelet runs its pods' sidecars itself.
                    and pod.get("spec", {}).get("nodeName") != REAL_NODE_NAME):
                wanted[meta["uid"]] = pod
        for uid in list(self.running):
            if uid not in wanted:
                self.stop(uid)
            elif self.running[uid].proc.poll() is not None:
                # Like a kubelet: a sidecar that exited is restarted (restartPolicy: Always).
                self.stop(uid, reason="exited")
        for uid, pod in wanted.items():
            if uid not in self.running:
                self.start(pod)

    def run(self, interval: float = 0.3) -> None:
        # Polling keeps the runner simple and level-triggered; 0.3 s is below kopf's own batching.
        while not self._stop.is_set():
            self.sync()
            self._stop.wait(interval)
        for uid in list(self.running):
            self.stop(uid, reason="runner stopping")

    def shutdown(self) -> None:
        self._stop.set()


def main() -> int:
    runner = PodRunner(LocalCluster())
    signal.signal(signal.SIGTERM, lambda *_: runner.shutdown())
    signal.signal(signal.SIGINT, lambda *_: runner.shutdown())
    _log(f"watching pods annotated {INJECTED}=true (state {STATE}, repo {ROOT})")
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
