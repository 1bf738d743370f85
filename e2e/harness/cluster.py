"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, started as plain processes from the binaries that
e2e/build-control-plane.sh builds into ~/.cache/perfpilot/bin.

Why our own launcher rather than kwokctl: every flag is visible here, the processes are
ours to stop (pid files plus a sweep for anything whose command line names our state
directory), pod IPs come from loopback CIDRs we set on the nodes, and nothing is written
outside the checkout's e2e/.state and the cache.

    python -m e2e.harness.cluster up|down|status
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from e2e.harness import node as real_node
from e2e.harness.pki import Pki, ensure_pki, issue_client_cert
from e2e.harness.procs import pid_alive as _pid_alive
from e2e.harness.procs import read_pid, start_logged
from e2e.harness.procs import tail as _tail
from e2e.harness.procs import terminate as _terminate

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot"))
BIN = CACHE / "bin"
STATE = Path(os.environ.get("PERFPILOT_STATE", ROOT / "e2e" / ".state"))

# Component order matters: each one needs the previous ones.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

NODE_COUNT = int(os.environ.get("PERFPILOT_KWOK_NODES", "2"))
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"   # the `kubernetes` Service (first address of SERVICE_CIDR)


def _log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Ports:
    """Loopback ports; override with PERFPILOT_PORT_BASE to run two clusters side by side."""

    base: int = int(os.environ.get("PERFPILOT_PORT_BASE", "0"))
    etcd_client: int = field(init=False)
    etcd_peer: int = field(init=False)
    apiserver: int = field(init=False)
    kcm: int = field(init=False)
    scheduler: int = field(init=False)
    kwok: int = field(init=False)
    pod_octet: int = field(init=False)   # pods get 127.<pod_octet>.N.x: distinct per cluster

    def __post_init__(self) -> None:
        b = self.base
        self.etcd_client = 2379 + b
        self.etcd_peer = 2380 + b
        self.apiserver = 6443 + b
        self.kcm = 10257 + b
        self.scheduler = 10259 + b
        self.kwok = 10247 + b
        self.pod_octet = 1 + (b // 100) % 250


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the component and its log."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message carries kubectl's own error text."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[2:])} failed ({self.returncode}): {self.stderr.strip()}"


class LocalCluster:
    """Start, probe and stop the local control plane. Safe to call `up` twice."""

    def __init__(self, state: Path = STATE, bin_dir: Path = BIN) -> None:
        self.state = state
        self.bin = bin_dir
        self.ports = Ports()
        self.pki = Pki(state / "pki")
        self.kubeconfig = state / "kubeconfig"
        self.logs = state / "logs"
        self.pids = state / "pids"
        # The real node (containerd + kubelet) beside the kwok nodes; PERFPILOT_REAL_NODE=0
        # leaves it out of `up` (`down` always cleans up after one).
        self.node = real_node.RealNode(state=state, bin_dir=bin_dir, pki=self.pki,
                                       base=self.ports.base, api_service_ip=SERVICE_IP,
                                       api_port=self.ports.apiserver)
        self.with_real_node = real_node.enabled()

    # ---------------------------------------------------------------- paths / env
    def binary(self, name: str) -> str:
        path = self.bin / name
        if not path.exists():
            raise ClusterError(
                f"{path} is missing: run `make cluster-build` (e2e/build-control-plane.sh) first"
            )
        return str(path)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def env(self) -> dict[str, str]:
        """Environment for child tools: our kubectl/helm first on PATH, our kubeconfig."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    # ---------------------------------------------------------------- kubectl
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster, text in and out."""
        cmd = [self.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, output=proc.stdout, stderr=proc.stderr)
        return proc

    def apply_crds(self) -> None:
        """Apply every CRD in crds/ and wait until each one is Established; create the namespace
        where a host-run operator keeps its leader Lease (settings.py: perfpilot-system)."""
        import yaml  # the operator extra's pyyaml; only the harness needs it here

        self.kubectl("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\n"
                                               "metadata: {name: perfpilot-system}\n")

        files = sorted(p for p in (ROOT / "crds").glob("*.yaml"))
        if not files:
            raise ClusterError(f"no CRDs found in {ROOT / 'crds'}")
        names = [
            doc["metadata"]["name"]
            for f in files
            for doc in yaml.safe_load_all(f.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        for f in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        # `kubectl wait` fails at once on a CRD without status yet (a fresh cluster): retry.
        deadline = time.monotonic() + 60
        while True:
            done = self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                *[f"crd/{n}" for n in names], check=False, timeout=70)
            if done.returncode == 0:
                return
            if "accessor error" not in done.stderr or time.monotonic() > deadline:
                raise KubectlError(done.returncode, done.args, output=done.stdout,
                                   stderr=done.stderr)
            time.sleep(0.2)

    # ---------------------------------------------------------------- lifecycle
    def is_up(self) -> bool:
        """True when the API server answers /readyz with our admin credentials."""
        if not self.kubeconfig.exists() or not self.pki.exists():
            return False
        try:
            return self._get(f"{self.server}/readyz", timeout=2) == "ok"
        except OSError:
            return False

    def up(self) -> float:
        """Start everything (or reuse a healthy cluster); return the seconds it took."""
        t0 = time.monotonic()
        if (self.is_up() and all(self._alive(c) for c in COMPONENTS) and self._nodes_ready()
                and (not self.with_real_node
                     or (self.node.alive() and self.node.is_ready(self.kubectl)))):
            _log(f"cluster already up at {self.server} (KUBECONFIG={self.kubeconfig})")
            return 0.0
        self.down(quiet=True)
        for c in COMPONENTS:
            self.binary(c)
        self.state.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state / "etcd", ignore_errors=True)
        self.logs.mkdir(exist_ok=True)
        self.pids.mkdir(exist_ok=True)
        ensure_pki(self.pki.dir, service_ip=SERVICE_IP)
        self._ensure_kubelet_client_cert()
        self._write_kubeconfig()
        phases: dict[str, float] = {}
        try:
            t = time.monotonic()
            self._start("etcd", self._etcd_args())
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"),
                       "etcd", 30)
            phases["etcd"] = time.monotonic() - t
            t = time.monotonic()
            self._start("kube-apiserver", self._apiserver_args())
            self._wait(self.is_up, "kube-apiserver", 90)
            phases["kube-apiserver"] = time.monotonic() - t
            t = time.monotonic()
            self._start("kube-controller-manager", self._kcm_args())
            self._start("kube-scheduler", self._scheduler_args())
            self._write_kwok_config()
            self._start("kwok", self._kwok_args())
            self._create_nodes()
            self._wait(self._nodes_ready, "kwok nodes Ready", 60)
            self._wait(self._default_sa, "the default ServiceAccount", 60)
            phases["controllers, kwok nodes Ready"] = time.monotonic() - t
            if self.with_real_node:
                phases |= self.node.up(self.kubectl, self.server)
        except real_node.NodeError as exc:
            self.down(quiet=True)
            raise ClusterError(f"the real node did not come up: {exc}") from exc
        except ClusterError:
            self.down(quiet=True)
            raise
        took = time.monotonic() - t0
        _log("set-up phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
        real = (f", real node {self.node.name} ({self.node.node_ip}, pods on "
                f"{self.node.subnet}, containerd {self.node.containerd_address})"
                if self.with_real_node else "")
        _log(f"cluster up in {took:.1f}s: {self.server}, {NODE_COUNT} kwok nodes{real}, "
             f"KUBECONFIG={self.kubeconfig}")
        return took

    def down(self, quiet: bool = False) -> None:
        """Stop every component (reverse order), then sweep for strays naming our state dir."""
        stopped = []
        api = self._alive("kube-apiserver") and self.is_up()
        try:
            cleaned = self.node.down(self.kubectl if api else None)
        except (OSError, subprocess.SubprocessError, real_node.NodeError, ClusterError) as exc:
            cleaned = [f"FAILED ({exc})"]
        if cleaned:
            stopped.append(f"real node [{', '.join(cleaned)}]")
        for name in reversed(COMPONENTS):
            pid = self._pid(name)
            if pid and _terminate(pid):
                stopped.append(name)
            (self.pids / f"{name}.pid").unlink(missing_ok=True)
        strays = _processes_mentioning(str(self.state), self.bin)
        for pid in strays:
            _terminate(pid)
        if not quiet:
            _log(f"stopped {', '.join(stopped) or 'nothing (not running)'}"
                 + (f"; swept {len(strays)} stray process(es)" if strays else ""))

    def restart_apiserver(self, down_for: float = 0.0) -> float:
        """Stop kube-apiserver (SIGTERM, as a rolling control-plane upgrade does), keep it down
        `down_for` seconds, start it again with the same flags (etcd keeps the state); the
        seconds until /readyz answered again after the start."""
        pid = self._pid("kube-apiserver")
        if pid is None or not _terminate(pid):
            raise ClusterError("kube-apiserver is not running")
        time.sleep(down_for)
        t = time.monotonic()
        self._start("kube-apiserver", self._apiserver_args())
        self._wait(self.is_up, "kube-apiserver after its restart", 90)
        return time.monotonic() - t

    def wait_controllers(self, timeout: float = 240.0) -> float:
        """Wait until kube-controller-manager acts again (a new namespace gets its default
        ServiceAccount); the seconds it took. After an API server restart its informers
        re-establish their watches at their own pace (about a minute here: it runs without
        leader election, so nothing restarts it as a kubeadm static pod would be)."""
        t = time.monotonic()
        n = 0
        while True:
            n += 1
            ns = f"probe-controllers-{os.getpid()}-{n}"
            self.kubectl("create", "namespace", ns, check=False)
            deadline = time.monotonic() + 5
            ok = False
            while not ok and time.monotonic() < deadline:
                ok = self.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0
                time.sleep(0.2)
            self.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            if ok:
                return time.monotonic() - t
            if time.monotonic() - t > timeout:
                raise ClusterError(f"kube-controller-manager did not act within {timeout:.0f}s "
                                   f"after the API server restart; its log:\n"
                                   + _tail(self.logs / "kube-controller-manager.log"))

    def status(self) -> dict[str, bool]:
        real = ({"containerd": self.node._alive("containerd"),
                 "kubelet": self.node._alive("kubelet")} if self.with_real_node else {})
        return {c: self._alive(c) for c in COMPONENTS} | real | {"ready": self.is_up()}

    # ---------------------------------------------------------------- components
    def _etcd_args(self) -> list[str]:
        p = self.ports
        return [
            "--name=perfpilot",
            f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-cluster=perfpilot=http://127.0.0.1:{p.etcd_peer}",
            "--unsafe-no-fsync",  # a throwaway test store: durability buys nothing here
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p, k = self.ports, self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{p.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",  # closed network: no default route to pick from
            f"--secure-port={p.apiserver}",
            f"--tls-cert-file={k.server_crt}",
            f"--tls-private-key-file={k.server_key}",
            f"--client-ca-file={k.ca_crt}",
            "--authorization-mode=Node,RBAC",
            # The real node's kubelet: the API server authenticates to it with a client
            # certificate, verifies its serving certificate, and dials its InternalIP.
            f"--kubelet-client-certificate={self.pki.dir / 'kube-apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={self.pki.dir / 'kube-apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={k.ca_crt}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # Webhooks and aggregated APIs behind a Service reach its endpoints (pod IPs on the
            # real node's bridge) directly: there is no kube-proxy for ClusterIPs here.
            "--enable-aggregator-routing=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--service-account-issuer=https://127.0.0.1:{p.apiserver}",
            f"--service-account-key-file={k.sa_pub}",
            f"--service-account-signing-key-file={k.sa_key}",
            # Defaults keep MutatingAdmissionWebhook and ValidatingAdmissionWebhook on; we
            # name them so a reader of `ps` sees that webhooks are live.
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "NodeRestriction,DefaultStorageClass,ResourceQuota,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.state / 'apiserver-certs'}",
            "--profiling=false",
            "--v=0",
        ]

    def _component_common(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--profiling=false",
        ]

    def _kcm_args(self) -> list[str]:
        k = self.pki
        return [
            *self._component_common(),
            f"--secure-port={self.ports.kcm}",
            f"--cert-dir={self.state / 'kcm-certs'}",
            f"--service-account-private-key-file={k.sa_key}",
            f"--root-ca-file={k.ca_crt}",
            f"--cluster-signing-cert-file={k.ca_crt}",
            f"--cluster-signing-key-file={k.ca_key}",
            "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Pod CIDRs are set on our nodes by hand (loopback); no allocator.
            "--allocate-node-cidrs=false",
            "--controllers=*,-nodeipam,-service-lb-controller,-route,-cloud-node-lifecycle",
        ]

    def _scheduler_args(self) -> list[str]:
        return [
            *self._component_common(),
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.state / 'scheduler-certs'}",
        ]

    def _kwok_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.state / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
        ]

    def _write_kwok_config(self) -> None:
        """kwok's own options, plus its default pod stages with one change (pod_stages)."""
        (self.state / "kwok.yaml").write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
            "kind: KwokConfiguration\n"
            "options:\n"
            f"  cidr: 127.{self.ports.pod_octet}.0.0/16\n"
            "  nodeIP: 127.0.0.1\n"
            + "".join(f"---\n{stage}" for stage in pod_stages(self.bin.parent))
        )

    def _create_nodes(self) -> None:
        """kwok nodes with loopback pod CIDRs (127.1.N.0/24): pods get 127.x IPs."""
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "List", "items": [self._node(i) for i in range(NODE_COUNT)]}))

    def _node(self, i: int, pods: int = 110) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"kwok-node-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake",
                                "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}",
                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                           "node-role.kubernetes.io/agent": ""},
            },
            "spec": {"podCIDR": f"127.{self.ports.pod_octet}.{i}.0/24",
                     "podCIDRs": [f"127.{self.ports.pod_octet}.{i}.0/24"]},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": str(pods)},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": str(pods)},
            },
        }

    def ensure_kwok_nodes(self, count: int, pods: int = 110, timeout: float = 120) -> None:
        """At least `count` Ready kwok nodes; the ones added take `pods` pods each (at most 250:
        a node's pod CIDR is a /24). For the scale scenario (e2e/harness/scale.py)."""
        if not 1 <= pods <= 250 or count > 250:
            raise ValueError(f"{count} nodes of {pods} pods: at most 250 nodes of 250 pods "
                             f"(one /24 of 127.{self.ports.pod_octet}.N.0 each)")
        have = set(self.kubectl("get", "nodes", "-l", "type=kwok", "-o",
                                "jsonpath={.items[*].metadata.name}").stdout.split())
        new = [self._node(i, pods) for i in range(count) if f"kwok-node-{i}" not in have]
        if new:
            self.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": new}), timeout=120)

        def ready() -> bool:
            out = self.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json", check=False)
            nodes = json.loads(out.stdout)["items"] if out.returncode == 0 else []
            return sum(1 for n in nodes if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", []))) >= count
        self._wait(ready, f"{count} kwok nodes Ready", timeout)

    def _ensure_kubelet_client_cert(self) -> None:
        """The API server's identity towards kubelets (logs, exec, port-forward)."""
        if not (self.pki.dir / "kube-apiserver-kubelet-client.crt").exists():
            issue_client_cert(self.pki, user="kube-apiserver-kubelet-client",
                              groups=["system:masters"], out_dir=self.pki.dir)

    # ---------------------------------------------------------------- probes
    def _nodes_ready(self) -> bool:
        """All kwok nodes Ready (the real node has its own wait)."""
        out = self.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        nodes = json.loads(out.stdout)["items"]
        ready = [
            n for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) >= NODE_COUNT

    def _default_sa(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return ctx

    def _get(self, url: str, timeout: float) -> str:
        with urllib.request.urlopen(url, timeout=timeout, context=self._ssl()) as r:
            return cast(bytes, r.read()).decode()  # urlopen's response is typed Any

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return cast(int, r.status) == 200
        except OSError:
            return False

    def _wait(self, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if probe():
                return
            for name in COMPONENTS:
                pidfile = self.pids / f"{name}.pid"
                if pidfile.exists() and not self._alive(name):
                    raise ClusterError(
                        f"{name} exited while waiting for {what}; last log lines:\n"
                        + _tail(self.logs / f"{name}.log")
                    )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")

    # ---------------------------------------------------------------- processes
    def _start(self, name: str, args: list[str]) -> None:
        pid = start_logged([self.binary(name), *args], name=name, logs=self.logs, pids=self.pids,
                           cwd=self.state)
        _log(f"started {name} (pid {pid}, log {self.logs / (name + '.log')})")

    def _pid(self, name: str) -> int | None:
        return read_pid(self.pids, name)

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and _pid_alive(pid)

    def _write_kubeconfig(self) -> None:
        k = self.pki
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: perfpilot-local
  cluster:
    server: {self.server}
    certificate-authority: {k.ca_crt}
users:
- name: perfpilot-admin
  user:
    client-certificate: {k.admin_crt}
    client-key: {k.admin_key}
contexts:
- name: perfpilot-local
  context: {{cluster: perfpilot-local, user: perfpilot-admin, namespace: default}}
current-context: perfpilot-local
""")


# In kwok's pod-ready stage, after each container status's `ready: true`: report the container's
# resources, as a kubelet with in-place resize does. The API server accepts a pods/resize request
# only for pods whose running containers report them (the version-skew guard of the resize KEP).
_READY_LINE = "        ready: true\n"
_RESOURCES_LINE = ("        {{ with .resources }}resources: {{ YAML . 2 }}"
                   "{{ else }}resources: {}{{ end }}\n")


def pod_stages(cache: Path) -> list[str]:
    """kwok's default ("fast") pod stages, copied by the build script, with resources reported."""
    dirs = sorted((cache / "kwok-stages").glob("v*"))
    if not dirs or not (dirs[-1] / "pod-ready.yaml").exists():
        raise ClusterError(f"kwok pod stages missing under {cache / 'kwok-stages'}: "
                           f"run `make cluster-build`")
    out = []
    for name in ("pod-ready.yaml", "pod-complete.yaml", "pod-delete.yaml"):
        text = (dirs[-1] / name).read_text()
        if name == "pod-ready.yaml":
            if text.count(_READY_LINE) != 2:
                raise ClusterError(f"unexpected kwok pod-ready stage in {dirs[-1]}")
            text = text.replace(_READY_LINE, _READY_LINE + _RESOURCES_LINE)
        out.append(text if text.endswith("\n") else text + "\n")
    return out


def _processes_mentioning(needle: str, bin_dir: Path = BIN) -> list[int]:
    """PIDs of our binaries (argv[0] in bin_dir) whose arguments name `needle`: strays from a
    crashed run of the cluster that owns that state directory."""
    found = []
    prefix = str(bin_dir) + os.sep
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and args[0].startswith(prefix) and any(needle in a for a in args[1:]):
            if _pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    cluster = LocalCluster()
    try:
        if args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down()
        else:
            for k, v in cluster.status().items():
                print(f"{k:26} {'yes' if v else 'no'}")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
