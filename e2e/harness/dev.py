"""The operator and the pod runner as background processes on the local cluster: what `make
dev-up` / `make demo` start and `make dev-down` / `make cluster-down` stop.

The operator runs out of cluster (kwok runs no containers) with its webhooks registered by URL
on loopback; the pod runner starts a real sidecar process for every injected pod.

    python -m e2e.harness.dev up|down|status
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from e2e.harness.cluster import ROOT, LocalCluster, Ports
from e2e.harness.procs import pid_alive, terminate

# Away from the common 8080/8081/9443, which other local tools like to hold; offset by
# PERFPILOT_PORT_BASE like the cluster's own ports, so two dev set-ups run side by side.
OPERATOR_WEBHOOK_PORT = 29443 + Ports().base
OPERATOR_HEALTH_PORT = 28081 + Ports().base
OPERATOR_METRICS_PORT = 28080 + Ports().base


def operator_env(cluster: LocalCluster, *, webhook_port: int, health_port: int,
                 metrics_port: int, resync: str) -> dict[str, str]:
    return {
        "PERFPILOT_WEBHOOK_PORT": str(webhook_port),
        "PERFPILOT_WEBHOOK_HOST": "127.0.0.1",
        "PERFPILOT_WEBHOOK_URL_HOST": "127.0.0.1",
        "PERFPILOT_HEALTH_HOST": "127.0.0.1",
        "PERFPILOT_HEALTH_PORT": str(health_port),
        "PERFPILOT_METRICS_HOST": "127.0.0.1",
        "PERFPILOT_METRICS_PORT": str(metrics_port),
        "PERFPILOT_CERT_DIR": str(cluster.state / "operator-certs"),
        "PERFPILOT_RESYNC_INTERVAL": resync,
    }


OPERATOR_NAMESPACE = "perfpilot-system"   # Settings.namespace's default: the CA Secret lives there


def ensure_operator_namespace(cluster: LocalCluster) -> None:
    """The operator keeps its CA Secret in its own namespace, as in a cluster (the chart's
    namespace); out of cluster that is perfpilot-system, created here once."""
    if cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)


def start(cluster: LocalCluster, name: str, cmd: list[str], env: dict[str, str]
          ) -> subprocess.Popen[bytes]:
    """A process in its own session, output to <state>/logs/<name>.log (truncated), pid file."""
    cluster.logs.mkdir(parents=True, exist_ok=True)
    log = (cluster.logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, env={**cluster.env(), **env}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=ROOT)
    cluster.pids.mkdir(parents=True, exist_ok=True)
    (cluster.pids / f"{name}.pid").write_text(str(proc.pid))
    return proc


def operator_command() -> list[str]:
    return [str(Path(sys.executable).parent / "perfpilot-operator")]


def podrunner_command() -> list[str]:
    return [sys.executable, "-m", "e2e.harness.podrunner"]


def fleet_command(record: Path | None = None, load: Path | None = None) -> list[str]:
    """The agent fleet (e2e/harness/fleet.py): real agents for pods labelled perfpilot.io/host=fleet."""
    return [sys.executable, "-m", "e2e.harness.fleet",
            *(["--record", str(record)] if record is not None else []),
            *(["--load", str(load)] if load is not None else [])]


def wait_healthy(cluster: LocalCluster, proc: subprocess.Popen[bytes], health_port: int,
                 timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"perfpilot-operator exited {proc.returncode}; see "
                               f"{cluster.logs / 'operator.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz",
                                        timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator's /healthz did not answer within {timeout:.0f}s")
        time.sleep(0.2)
    while cluster.kubectl("get", "mutatingwebhookconfiguration", "perfpilot-pod-injector",
                          check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the operator did not register its pod webhook")
        time.sleep(0.2)


def stop(cluster: LocalCluster, name: str) -> bool:
    pidfile = cluster.pids / f"{name}.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return False
    alive = terminate(pid, grace=20)
    pidfile.unlink(missing_ok=True)
    return alive


def running(cluster: LocalCluster, name: str) -> bool:
    try:
        return pid_alive(int((cluster.pids / f"{name}.pid").read_text()))
    except (OSError, ValueError):
        return False


def up(cluster: LocalCluster) -> None:
    if not cluster.is_up():
        cluster.up()
    cluster.apply_crds()
    if not running(cluster, "podrunner"):
        start(cluster, "podrunner", podrunner_command(), {})
    if not running(cluster, "operator"):
        ensure_operator_namespace(cluster)
        proc = start(cluster, "operator", operator_command(), operator_env(
            cluster, webhook_port=OPERATOR_WEBHOOK_PORT, health_port=OPERATOR_HEALTH_PORT,
            metrics_port=OPERATOR_METRICS_PORT, resync="2s"))
        wait_healthy(cluster, proc, OPERATOR_HEALTH_PORT)
    print(f"[dev] operator (webhooks 127.0.0.1:{OPERATOR_WEBHOOK_PORT}, metrics "
          f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics) and pod runner are running; "
          f"logs in {cluster.logs}", flush=True)


def down(cluster: LocalCluster) -> None:
    stopped = [n for n in ("operator", "podrunner") if stop(cluster, n)]
    if cluster.is_up() or cluster.status().get("kube-apiserver"):
        for kind, name in (("mutatingwebhookconfiguration", "perfpilot-pod-injector"),
                           ("validatingwebhookconfiguration", "perfpilot-profile-validator")):
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
    print(f"[dev] stopped {', '.join(stopped) or 'nothing (not running)'}", flush=True)


def sidecar_socket(cluster: LocalCluster, namespace: str, pod: str) -> Path | None:
    """The Unix socket of a pod's sidecar as the pod runner placed it; None until started."""
    for d in (cluster.state / "pods").glob(f"{namespace}_{pod}_*"):
        sock = next((d / "volumes").resolve().rglob("*.sock"), None)
        if sock is not None:
            return sock
    return None


def app_load(cluster: LocalCluster, namespace: str, selector: str, latency: float,
             seconds: float) -> int:
    """Play the app: ops of `latency` seconds, timed with the client library's measure(), sent
    to the first selected pod's sidecar for `seconds`. Returns how many ops were measured."""
    from perfpilot_client import AgentClient

    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o",
                          "jsonpath={.items[*].metadata.name}").stdout.split()
    deadline = time.monotonic() + 60
    sock = None
    while sock is None:
        sock = next((s for p in out if (s := sidecar_socket(cluster, namespace, p))), None)
        if sock is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sidecar socket for pods {out} in {namespace}")
            time.sleep(0.2)
    n = 0
    with AgentClient(str(sock), batch_wait=0.05) as agent:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with agent.measure("answer"):
                time.sleep(latency)         # the op's work: waiting on a model, say
            n += 1
        agent.flush()
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "load"])
    parser.add_argument("--namespace", default="default", help="load: the pods' namespace")
    parser.add_argument("--selector", default="", help="load: label selector of the pods")
    parser.add_argument("--latency", type=float, default=0.2, help="load: seconds per op")
    parser.add_argument("--seconds", type=float, default=10, help="load: how long")
    args = parser.parse_args(argv)
    cluster = LocalCluster()
    if args.command == "load":
        n = app_load(cluster, args.namespace, args.selector, args.latency, args.seconds)
        print(f"[dev] measured {n} ops of {args.latency * 1000:g} ms in {args.seconds:g}s")
    elif args.command == "up":
        up(cluster)
    elif args.command == "down":
        down(cluster)
    else:
        for name in ("operator", "podrunner"):
            print(f"{name:26} {'yes' if running(cluster, name) else 'no'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
