"""The agent fleet: many real agents in one process, one per injected pod, on the pod's own IP.

1,000 sidecar processes do not fit here (each is a Python interpreter with grpc, NumPy and
psutil: ~60 MB), so for pods labelled `perfpilot.io/host=fleet` this process runs the real
`AgentApp` (the sidecar's own servicer, auth interceptor, decode guard, live config, TTL cache,
monitor and event bus) once per pod, bound to the pod's 127.x IP and the injected port, with the
pod's injected env resolved as a kubelet would (fieldRefs, Secret refs, the CA file). The pod runner
(e2e/harness/podrunner.py) starts full sidecar processes for every other injected pod.

How faithful it is: the operator talks to one real gRPC server per pod over TCP, with the real
Configure / GetStats / Heartbeat code and the mutual-TLS check. What differs from a sidecar process:
the agents share one process, event loop and GIL (their latencies include each other's work, a
worst case), there is no Unix socket and no /metrics listener, and no kernel pool (the scale
profiles set pools.processWorkers 0: heartbeat-only agents, as the CRD documents); the psutil
sample in Heartbeat/GetStats is the fleet process's.

With `--record FILE` it appends one line per applied Configure and per GetStats:
`<unix time> configure|stats <namespace>/<pod> <generation>`; the scale benchmark reads it.

With `--load FILE` it plays an app's traffic: FILE holds `{"<namespace>/<deployment>": seconds}`
(rewritten at will); every 0.1 s each agent of those Deployments' pods records a batch of ops of
that duration through the agent's own RecordTimings code (`Monitor.record_timings`, what the
client library's measure() reaches over the Unix socket), so GetStats reports that app latency.
The first batch of each new value is recorded as `<unix time> latency <namespace>/<deployment>
<microseconds>` (the moment a breach begins, for the scale benchmark).

    python -m e2e.harness.fleet [--record FILE] [--load FILE]     # runs until SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from e2e.harness.cluster import LocalCluster
from e2e.harness.podrunner import (
    INJECTED, map_paths, resolve_env, short_volumes_root, sidecar_spec, write_downward_volumes,
)

FLEET_LABEL = "perfpilot.io/host"
FLEET_SELECTOR = f"{FLEET_LABEL}=fleet"


def _log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", flush=True)


LOAD_PERIOD_S = 0.1
LOAD_BATCH = 10          # ops per agent per period


def deployment_of(key: str) -> str:
    """`<namespace>/<deployment>` of a Deployment's pod `<namespace>/<deployment>-<rs>-<id>`."""
    return key.rsplit("-", 2)[0]


def read_load(path: Path) -> dict[str, float]:
    """The --load file: {namespace/deployment: seconds}; absent or half-written reads as none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def wanted(pod: dict[str, Any]) -> bool:
    """A pod the fleet hosts an agent for: injected, Running, with an IP, not going away."""
    meta, status = pod.get("metadata", {}), pod.get("status") or {}
    return ((meta.get("annotations") or {}).get(INJECTED) == "true"
            and status.get("phase") == "Running" and bool(status.get("podIP"))
            and not meta.get("deletionTimestamp") and sidecar_spec(pod) is not None)


class PodFeed(threading.Thread):
    """LIST then WATCH pods matching `selector` (server-side), handing each event to `emit`
    on the event loop; re-lists after an error or 410 Gone."""

    def __init__(self, core: Any, selector: str, loop: asyncio.AbstractEventLoop,
                 emit: Any) -> None:
        super().__init__(daemon=True, name="fleet-pod-feed")
        self.core, self.selector, self.loop, self.emit = core, selector, loop, emit
        self.stopping = threading.Event()

    def run(self) -> None:
        from kubernetes import watch

        while not self.stopping.is_set():
            try:
                out = self.core.list_pod_for_all_namespaces(label_selector=self.selector,
                                                            _preload_content=False)
                data = json.loads(out.data)
                self.loop.call_soon_threadsafe(self.emit, "SYNC", data["items"])
                rv = data["metadata"]["resourceVersion"]
                for ev in watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                               label_selector=self.selector,
                                               resource_version=rv, timeout_seconds=300,
                                               deserialize=False):
                    self.loop.call_soon_threadsafe(self.emit, ev["type"], [ev["object"]])
                    if self.stopping.is_set():
                        return
            except Exception as e:  # noqa: BLE001 - the API server restarting must not end us
                if not self.stopping.is_set():
                    _log(f"pod feed: {type(e).__name__}: {str(e)[:200]}; re-listing")
                    self.stopping.wait(1.0)


class Fleet:
    """pod uid -> a running AgentApp, kept level with the pods the feed reports."""

    def __init__(self, cluster: LocalCluster, *, selector: str = FLEET_SELECTOR,
                 record: Path | None = None, load: Path | None = None) -> None:
        from kubernetes import client, config

        self.api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.selector = selector
        self.volumes = short_volumes_root(cluster, "fleet")  # per pod: its downwardAPI files
        self.apps: dict[str, Any] = {}            # uid -> AgentApp
        self.keys: dict[str, str] = {}            # uid -> namespace/name
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> latest pod
        self.secrets: dict[tuple[str, str, str], str | None] = {}
        self.record: IO[str] | None = record.open("a", buffering=1) if record else None
        self.registry: Any = None
        self.changed = asyncio.Event()
        self.failed: dict[str, str] = {}          # uid -> why its agent is not running (yet)
        self.load_path = load
        self.load_fed: dict[str, float] = {}      # namespace/deployment -> seconds being fed

    def read_secret(self, namespace: str, name: str, key: str) -> str | None:
        import base64

        from kubernetes.client.exceptions import ApiException

        if (namespace, name, key) not in self.secrets:
            try:
                data = self.core.read_namespaced_secret(name, namespace).data or {}
            except ApiException:
                return None       # not cached: asked again at the next change
            self.secrets[(namespace, name, key)] = (base64.b64decode(data[key]).decode()
                                                    if key in data else None)
        return self.secrets[(namespace, name, key)]

    def on_event(self, kind: str, pods: list[dict[str, Any]]) -> None:
        if kind == "SYNC":
            self.pods = {p["metadata"]["uid"]: p for p in pods}
        elif kind == "DELETED":
            for p in pods:
                self.pods.pop(p["metadata"]["uid"], None)
        elif kind in ("ADDED", "MODIFIED"):
            for p in pods:
                self.pods[p["metadata"]["uid"]] = p
        self.changed.set()

    def _note(self, what: str, key: str, generation: int) -> None:
        if self.record is not None:
            self.record.write(f"{time.time():.6f} {what} {key} {generation}\n")

    async def start_app(self, uid: str, pod: dict[str, Any]) -> None:
        from perfpilot_agent.app import AgentApp
        from perfpilot_agent.config import load_settings

        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        container = sidecar_spec(pod)
        assert container is not None
        try:
            env = await asyncio.to_thread(resolve_env, container, pod, self.read_secret)
        except LookupError as e:
            self._failed(uid, key, f"waiting: {e}")  # a Secret it names is not there yet
            return
        # Like the kubelet: the downwardAPI volume with the operator's CA (from the pod's
        # annotation) becomes a file, and the env's paths point into this pod's directory.
        volumes = self.volumes / uid
        env = map_paths(env, container, volumes)
        await asyncio.to_thread(write_downward_volumes, pod, container, volumes)
        try:
            settings = load_settings([], env=env)
        except SystemExit:    # argparse printed why; one pod's bad env never ends the fleet
            self._failed(uid, key, "its sidecar settings were refused (see above)")
            return
        settings = dataclasses.replace(settings, listen_host=pod["status"]["podIP"],
                                       socket_path="", metrics_port=-1)
        app = AgentApp(settings, registry_loader=lambda: self.registry)
        configure, snapshot = app.configure, app.snapshot

        def recorded_configure(generation: int, msg: Any, *, operator: bool = False) -> bool:
            applied = configure(generation, msg, operator=operator)
            if applied:
                self._note("configure", key, generation)
            return applied

        def recorded_snapshot() -> Any:
            self._note("stats", key, app.generation)
            return snapshot()

        # This one instance's methods wrapped to record each call (mypy refuses method assignment).
        app.configure = recorded_configure   # type: ignore[method-assign]
        app.snapshot = recorded_snapshot     # type: ignore[method-assign]
        self.apps[uid], self.keys[uid] = app, key
        try:
            await app.start()
        except Exception as e:  # noqa: BLE001 - one pod's failure never stops the fleet
            # E.g. the pod IP's port still held by the agent of a pod deleted a moment ago:
            # retried (reconcile) like a kubelet restarts a container that exited.
            self.apps.pop(uid, None)
            self.keys.pop(uid, None)
            self._failed(uid, key, f"agent did not start on {settings.listen_host}: {e}")
            return
        if self.failed.pop(uid, None) is not None:
            _log(f"{key}: agent started on {settings.listen_host} after a retry")

    def _failed(self, uid: str, key: str, why: str) -> None:
        """Logged once per pod and reason; reconcile retries while the pod is wanted."""
        if self.failed.get(uid) != why:
            _log(f"{key}: {why}; retrying")
        self.failed[uid] = why

    def feed_load(self) -> None:
        """One period of the --load traffic: a batch of ops into each matching agent."""
        from perfpilot.v1 import agent_pb2 as pb

        load = read_load(self.load_path) if self.load_path is not None else {}
        for deployment, seconds in load.items():
            if self.load_fed.get(deployment) != seconds:
                self.load_fed[deployment] = seconds
                self._note("latency", deployment, round(seconds * 1e6))
        for gone in [d for d in self.load_fed if d not in load]:
            del self.load_fed[gone]
        if not load:
            return
        for uid, app in list(self.apps.items()):
            latency = load.get(deployment_of(self.keys.get(uid, "")))
            if latency is not None:
                app.monitor.record_timings(pb.RecordTimingsRequest(ops=[pb.OpObservations(
                    op="answer", durations_seconds=[latency] * LOAD_BATCH)]))

    async def play_load(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.feed_load()
            try:
                await asyncio.wait_for(stop.wait(), LOAD_PERIOD_S)
            except TimeoutError:
                pass

    async def stop_app(self, uid: str) -> None:
        app = self.apps.pop(uid, None)
        self.keys.pop(uid, None)
        if app is not None:
            await app.stop(grace=0.5)

    async def reconcile(self) -> None:
        want = {uid for uid, p in self.pods.items() if wanted(p)}
        for uid in [u for u in self.failed if u not in want]:
            del self.failed[uid]
        # A pod whose IP changed (kwok may re-assign one) gets its agent moved to the new IP.
        gone = [uid for uid in self.apps if uid not in want
                or self.pods[uid]["status"]["podIP"] != self.apps[uid].settings.listen_host]
        new = [uid for uid in want if uid not in self.apps or uid in gone]
        if gone:
            await asyncio.gather(*(self.stop_app(u) for u in gone))
        if new:
            await asyncio.gather(*(self.start_app(u, self.pods[u]) for u in new))
        if gone or new:
            _log(f"hosting {len(self.apps)} agents (+{len(new)} -{len(gone)})")

    async def run(self, stop: asyncio.Event) -> None:
        from perfpilot_agent.runtime.compute import load_registry

        self.registry = load_registry()        # once for all agents (the kernels' names)
        feed = PodFeed(self.core, self.selector, asyncio.get_running_loop(), self.on_event)
        feed.start()
        _log(f"hosting agents for pods {self.selector}")
        player = asyncio.ensure_future(self.play_load(stop)) if self.load_path else None
        try:
            while not stop.is_set():
                waiter = asyncio.ensure_future(self.changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                # Level-triggered: pods whose agent failed to start are retried every second
                # even when no pod event comes.
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=1.0 if self.failed else None)
                waiter.cancel()
                stopper.cancel()
                self.changed.clear()
                await asyncio.sleep(0.1)        # batch a burst of pod events
                await self.reconcile()
        finally:
            feed.stopping.set()
            if player is not None:
                player.cancel()
            await asyncio.gather(*(self.stop_app(u) for u in list(self.apps)))
            shutil.rmtree(self.volumes, ignore_errors=True)
            _log("stopped every agent")


def raise_open_files_limit() -> None:
    """~3 descriptors per hosted agent (listener, epoll, connections): 1,000 agents exceed the
    usual soft limit of 1024. Raised to the hard limit, as servers do (best effort)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            _log(f"open files limit stays {soft}: {e}")


async def amain(record: Path | None, load: Path | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Fleet(LocalCluster(), record=record, load=load).run(stop)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.harness.fleet",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--record", type=Path, default=None,
                    help="append applied Configures and GetStats calls to this file")
    ap.add_argument("--load", type=Path, default=None,
                    help="play app latencies from this JSON file {namespace/deployment: seconds}")
    args = ap.parse_args(argv)
    asyncio.run(amain(args.record, args.load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
