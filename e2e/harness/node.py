"""A real node beside the kwok nodes: containerd + runc + a CNI bridge + a kubelet, as processes.

Pods scheduled here run in real containers with real cgroups, probes, logs and exec; the kwok
nodes stay for scale. `LocalCluster.up/down` (e2e/harness/cluster.py) start and stop it; so
`make cluster-up`, `make demo` and `make test` get it.

Placement: the node is labelled and tainted `perfpilot.io/node-kind=real` (NoSchedule), so pods
land here only with `REAL_NODE_SELECTOR` + `REAL_NODE_TOLERATION`; kwok manages only nodes
annotated `kwok.x-k8s.io/node=fake`, which this one is not.

Network rule (distinct per PERFPILOT_PORT_BASE, like the kwok pod CIDRs): octet =
1 + (base // 100) % 250; bridge `ppnode<octet>`, pods on 10.213.<octet>.0/24, node IP (the
bridge's address, the pods' gateway) 10.213.<octet>.1. Pods get no default route: nothing
leaves the machine. Bases 100 apart never collide.

Everything lives under <state>/node (containerd root/state/socket, runc root, kubelet root, pod
logs, CNI config and IPAM) and the cgroup tree /perfpilot-node-<octet>; `down` stops the
processes by PID and removes shims, mounts, netns, cgroups and the bridge, and puts back the
host sysctls the kubelet and the bridge plugin change (ip_forward, overcommit, panic...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.harness import node_images, oci
from e2e.harness.pki import Pki, issue_client_cert, issue_serving_cert
from e2e.harness.procs import pid_alive, read_pid, start_logged, tail, terminate

REAL_NODE_NAME = "real-node"
NODE_KIND_LABEL = "perfpilot.io/node-kind"
REAL_NODE_SELECTOR = {NODE_KIND_LABEL: "real"}
REAL_NODE_TOLERATION = {"key": NODE_KIND_LABEL, "operator": "Equal", "value": "real",
                        "effect": "NoSchedule"}
BRIDGE_PREFIX = "ppnode"
CNI_BIN = Path("/usr/lib/cni")
# Host sysctls the kubelet (setupKernelTunables) or the CNI bridge plugin (ip_forward) change.
HOST_SYSCTLS = ("net/ipv4/ip_forward", "vm/overcommit_memory", "vm/panic_on_oom",
                "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                "kernel/keys/root_maxbytes")
# Saved by the first real node on this machine, restored by the last one to go.
SYSCTL_SAVE = Path("/run/perfpilot/host-sysctls.json")
READY_TIMEOUT = float(os.environ.get("PERFPILOT_NODE_READY_TIMEOUT", "90"))

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def enabled() -> bool:
    """PERFPILOT_REAL_NODE=0 starts the cluster with kwok nodes only."""
    return os.environ.get("PERFPILOT_REAL_NODE", "1") != "0"


def _log(msg: str) -> None:
    print(f"[node {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class NodeError(RuntimeError):
    """The real node could not start or stop cleanly; the message names the log to read."""


@dataclass(frozen=True)
class NodeNetwork:
    """The node's bridge and pod /24 (see the module docstring for the rule)."""

    octet: int

    @classmethod
    def for_base(cls, base: int) -> NodeNetwork:
        return cls(1 + (base // 100) % 250)

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.octet}"

    @property
    def subnet(self) -> str:
        return f"10.213.{self.octet}.0/24"

    @property
    def node_ip(self) -> str:
        return f"10.213.{self.octet}.1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def _mounts_under(prefixes: list[str]) -> list[str]:
    """Mount points at or under any prefix, deepest first (from /proc/self/mountinfo)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _cgroup_mounts(types: tuple[str, ...] = ("cgroup",)) -> list[Path]:
    """Mount points of the cgroup hierarchies of these filesystem types (v1: "cgroup")."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] in types:
            points.append(Path(pre.split()[4]))
    return points


def _v1_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies: the kubelet's cgroupfs driver needs its root in each."""
    return _cgroup_mounts()


class RealNode:
    """One real node of a LocalCluster (its state dir, PKI, port base and API server)."""

    def __init__(self, *, state: Path, bin_dir: Path, pki: Pki, base: int,
                 api_service_ip: str, api_port: int) -> None:
        self.dir = state / "node"
        self.logs = state / "logs"
        self.pids = state / "pids"
        self.bin = bin_dir
        self.pki = pki
        self.name = REAL_NODE_NAME
        self.net = NodeNetwork.for_base(base)
        self.kubelet_port = 10250 + base
        self.healthz_port = 10248 + base
        self.cgroup_root = f"/perfpilot-node-{self.net.octet}"
        self.containerd_address = str(self.dir / "containerd.sock")
        self.kubelet_root = self.dir / "kubelet"
        self.cni_net = f"perfpilot-{self.net.octet}"
        # Pods reach the API server as on any cluster: the `kubernetes` Service's ClusterIP
        # (routed to the node, DNAT to the loopback API server; see _pod_api_access).
        self.api_service_ip = api_service_ip
        self.api_port = api_port

    # ------------------------------------------------------------------ API for tests
    @property
    def node_ip(self) -> str:
        return self.net.node_ip

    @property
    def subnet(self) -> str:
        return self.net.subnet

    def import_image(self, tar: Path) -> None:
        """Load an OCI tarball (e2e/harness/oci.py) into this node's containerd (k8s.io)."""
        oci.import_image(tar, self.containerd_address)

    def alive(self) -> bool:
        return all(self._alive(c) for c in ("containerd", "kubelet"))

    def is_ready(self, kubectl: Kubectl) -> bool:
        out = kubectl("get", "node", self.name, "-o",
                      'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False)
        return out.returncode == 0 and out.stdout.strip() == "True"

    # ------------------------------------------------------------------ lifecycle
    def up(self, kubectl: Kubectl, server: str) -> dict[str, float]:
        """Start containerd and the kubelet; wait until the node is Ready. Returns the
        seconds of each phase (printed by the caller)."""
        phases: dict[str, float] = {}
        t = time.monotonic()
        self._check_prerequisites()
        pause_ref, pause_tar = node_images.ensure_pause_image()
        phases["pause image"] = time.monotonic() - t

        t = time.monotonic()
        for d in ("containerd/root", "containerd/state", "runc", "cni/net.d", "cni/ipam",
                  "pod-logs", "kubelet", "pki"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self._save_host_sysctls()
        self._network_up()
        self._pod_api_access(add=True)
        self._cgroups_up()
        self._write_cni_config()
        self._write_containerd_config(pause_ref)
        phases["network, cgroups, configs"] = time.monotonic() - t

        t = time.monotonic()
        self._start("containerd", [shutil.which("containerd") or "/usr/bin/containerd",
                                   "--config", str(self.dir / "containerd.toml")])
        self._wait(self._containerd_ready, "containerd's socket", 30, "containerd")
        phases["containerd start"] = time.monotonic() - t

        t = time.monotonic()
        self.import_image(pause_tar)
        phases["pause import"] = time.monotonic() - t

        t = time.monotonic()
        self._write_kubelet_files(server)
        self._start("kubelet", [str(self.bin / "kubelet"), *self._kubelet_args()])
        self._wait(lambda: self.is_ready(kubectl), f"node {self.name} Ready", READY_TIMEOUT,
                   "kubelet")
        phases["kubelet start to node Ready"] = time.monotonic() - t
        return phases

    def down(self, kubectl: Kubectl | None) -> list[str]:
        """Stop everything the node started; return what was cleaned (for the log line)."""
        t0 = time.monotonic()
        done: list[str] = []
        if kubectl is not None and self._alive("kubelet"):
            self._drain(kubectl)
        netns = self._sandbox_netns()
        if self._stop("kubelet"):
            done.append("kubelet")
        killed = self._kill_cgroup_tree()
        if killed:
            done.append(f"{killed} container process(es)")
        if self._stop("containerd"):
            done.append("containerd")
        shims = self._kill_shims()
        if shims:
            done.append(f"{shims} shim(s)")
        mounts = self._unmount([str(self.dir), *netns])
        if mounts:
            done.append(f"{mounts} mount(s)")
        for ns in netns:
            Path(ns).unlink(missing_ok=True)
        if self._cgroups_down():
            done.append("cgroups")
        self._pod_api_access(add=False)
        if _link_exists(self.net.bridge):
            _ip("link", "delete", self.net.bridge, check=False)
            done.append(f"bridge {self.net.bridge}")
        for cached in Path("/var/lib/cni/results").glob(f"{self.cni_net}-*"):
            cached.unlink(missing_ok=True)
        if self._restore_host_sysctls():
            done.append("host sysctls restored")
        if not _mounts_under([str(self.dir)]):
            shutil.rmtree(self.kubelet_root, ignore_errors=True)
            shutil.rmtree(self.dir / "containerd" / "state", ignore_errors=True)
            shutil.rmtree(self.dir / "cni" / "ipam", ignore_errors=True)   # no leaked pod IPs
        if kubectl is not None:
            kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false",
                    check=False, timeout=15)
        if done:
            done.append(f"in {time.monotonic() - t0:.1f}s")
        return done

    # ------------------------------------------------------------------ checks
    def _check_prerequisites(self) -> None:
        missing = [p for p in ("/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc")
                   if not Path(p).exists() and not shutil.which(Path(p).name)]
        missing += [str(CNI_BIN / b) for b in ("bridge", "host-local", "loopback")
                    if not (CNI_BIN / b).exists()]
        if missing:
            raise NodeError(f"missing {', '.join(missing)}: run `make debs`")
        if not (self.bin / "kubelet").exists():
            raise NodeError(f"{self.bin / 'kubelet'} is missing: run `make cluster-build`")
        if len(self.containerd_address) + len(".ttrpc") > 100:
            raise NodeError(f"containerd socket path {self.containerd_address} is too long for "
                            f"a Unix socket: set PERFPILOT_STATE to a shorter directory")
        if not _v1_hierarchies():
            raise NodeError("no cgroup v1 hierarchy mounted: this harness drives the kubelet "
                            "with the cgroupfs driver on cgroup v1")

    # ------------------------------------------------------------------ host sysctls
    @staticmethod
    def _read_sysctls() -> dict[str, str]:
        return {k: (Path("/proc/sys") / k).read_text().strip() for k in HOST_SYSCTLS
                if (Path("/proc/sys") / k).exists()}

    def _save_host_sysctls(self) -> None:
        if not SYSCTL_SAVE.exists():
            SYSCTL_SAVE.parent.mkdir(parents=True, exist_ok=True)
            SYSCTL_SAVE.write_text(json.dumps(self._read_sysctls()))

    def _restore_host_sysctls(self) -> bool:
        """The last real node on the machine (no other ppnode bridge) puts the values back."""
        others = [p.name for p in Path("/sys/class/net").iterdir()
                  if p.name.startswith(BRIDGE_PREFIX) and p.name != self.net.bridge]
        if others or not SYSCTL_SAVE.exists():
            return False
        for key, value in json.loads(SYSCTL_SAVE.read_text()).items():
            try:
                (Path("/proc/sys") / key).write_text(value)
            except OSError as exc:
                _log(f"warning: could not restore {key}={value}: {exc}")
        SYSCTL_SAVE.unlink()
        return True

    # ------------------------------------------------------------------ network
    def _network_up(self) -> None:
        br, ip = self.net.bridge, self.net.node_ip
        clash = _ip("-o", "-4", "addr", "show", "to", self.net.subnet).stdout.split()
        if clash and clash[1] != br:
            raise NodeError(f"{self.net.subnet} is already used by interface {clash[1]}; "
                            f"pick another PERFPILOT_PORT_BASE (the octet is base//100)")
        if not _link_exists(br):
            _ip("link", "add", br, "type", "bridge")
        if f"{ip}/24" not in _ip("-o", "-4", "addr", "show", "dev", br).stdout:
            _ip("addr", "add", f"{ip}/24", "dev", br)
        _ip("link", "set", br, "up")

    def _iptables_rules(self) -> list[list[str]]:
        br, tag = self.net.bridge, f"perfpilot real node {self.net.bridge}"
        return [
            # kubernetes.default:443 -> the API server on loopback (what kube-proxy would do).
            ["-t", "nat", "PREROUTING", "-i", br, "-d", f"{self.api_service_ip}/32", "-p",
             "tcp", "--dport", "443", "-m", "comment", "--comment", tag, "-j", "DNAT",
             "--to-destination", f"127.0.0.1:{self.api_port}"],
            # Nothing from the pods is routed off the bridge (ip_forward is on for CNI).
            ["-t", "filter", "FORWARD", "-i", br, "!", "-o", br, "-m", "comment",
             "--comment", tag, "-j", "DROP"],
        ]

    def _pod_api_access(self, *, add: bool) -> None:
        """Install (or remove) the DNAT to the API server and the no-forwarding rule; the
        bridge's route_localnet lets the DNAT target loopback."""
        if shutil.which("iptables") is None:
            if add:
                raise NodeError("iptables is missing: run `make debs`")
            return
        for rule in self._iptables_rules():
            table, chain, spec = rule[:2], rule[2], rule[3:]
            present = subprocess.run(["iptables", "-w", *table, "-C", chain, *spec],
                                     capture_output=True, check=False).returncode == 0
            if add and not present:
                out = subprocess.run(["iptables", "-w", *table, "-I", chain, "1", *spec],
                                     capture_output=True, text=True, check=False)
                if out.returncode:
                    raise NodeError(f"iptables {' '.join(rule)} failed: {out.stderr.strip()}")
            while not add and present:
                subprocess.run(["iptables", "-w", *table, "-D", chain, *spec],
                               capture_output=True, check=False)
                present = subprocess.run(["iptables", "-w", *table, "-C", chain, *spec],
                                         capture_output=True, check=False).returncode == 0
        if add:
            Path(f"/proc/sys/net/ipv4/conf/{self.net.bridge}/route_localnet").write_text("1")

    def _write_cni_config(self) -> None:
        """bridge (gateway on the bridge, no masquerade) + host-local on the /24, no routes:
        pods reach each other, this host and the API server's ClusterIP, nothing else.
        containerd adds loopback itself."""
        conf = {
            "cniVersion": "0.4.0",
            "name": self.cni_net,
            "plugins": [{
                "type": "bridge", "bridge": self.net.bridge, "isGateway": True,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "ipam"),
                         "ranges": [[{"subnet": self.net.subnet, "gateway": self.net.node_ip}]],
                         "routes": [{"dst": f"{self.api_service_ip}/32",
                                     "gw": self.net.node_ip}]},
            }],
        }
        (self.dir / "cni" / "net.d" / "10-perfpilot.conflist").write_text(json.dumps(conf,
                                                                                      indent=1))

    # ------------------------------------------------------------------ cgroups
    def _cgroups_up(self) -> None:
        for h in _v1_hierarchies():
            path = h / self.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            if (h / "cpuset.cpus").exists():   # a new cpuset is empty until given cpus/mems
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (path / f).read_text().strip():
                        (path / f).write_text((h / f).read_text())

    def _cgroup_dirs(self) -> list[Path]:
        """Every cgroup of the node's tree in every hierarchy (runc also joins the v2 one of a
        hybrid host), children first."""
        dirs: list[Path] = []
        for h in _cgroup_mounts(("cgroup", "cgroup2")):
            top = h / self.cgroup_root.lstrip("/")
            if top.is_dir():
                dirs += [Path(p) for p, _, _ in os.walk(top)]
        return sorted(dirs, key=lambda p: -len(p.parts))

    def _kill_cgroup_tree(self) -> int:
        """SIGKILL every process left in the node's cgroups (containers, pause). Count them."""
        killed: set[int] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = set()
            for d in self._cgroup_dirs():
                try:
                    pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
                except OSError:
                    continue
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= pids
            time.sleep(0.1)
        return len(killed)

    def _cgroups_down(self) -> bool:
        dirs = self._cgroup_dirs()
        for d in dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass    # co-mounted hierarchies (cpu,cpuacct) list one directory twice
            except OSError as exc:
                _log(f"warning: could not remove cgroup {d}: {exc}")
        return bool(dirs)

    # ------------------------------------------------------------------ containerd
    def _write_containerd_config(self, pause_ref: str) -> None:
        d = self.dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "containerd.toml").write_text(f"""\
# Written by e2e/harness/node.py: a private containerd for the perfpilot real node.
version = 2
root = "{d / 'containerd' / 'root'}"
state = "{d / 'containerd' / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.containerd_address}"

[ttrpc]
  address = "{self.containerd_address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'containerd' / 'opt'}"

[{cri}]
  sandbox_image = "{pause_ref}"
  # Mandatory here: root lacks CAP_SYS_RESOURCE, lowering oom_score_adj fails every sandbox.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Pods' network namespaces under our state dir, not /run/netns: teardown finds every one.
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d / 'runc'}"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{d / 'cni' / 'net.d'}"
  max_conf_num = 1
""")

    def _containerd_ready(self) -> bool:
        if not Path(self.containerd_address).exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.containerd_address)
            except OSError:
                return False
        return subprocess.run(["ctr", "--address", self.containerd_address, "version"],
                              capture_output=True, check=False).returncode == 0

    def _sandbox_netns(self) -> list[str]:
        """Network namespace files (resolved, still present) named by the OCI bundles of the
        tasks containerd runs; readable even after containerd died. A stopped sandbox has
        neither a bundle nor a netns any more."""
        paths: set[str] = set()
        bundles = self.dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
        for config in bundles.glob("*/*/config.json"):
            try:
                spec = json.loads(config.read_text())
                paths |= {os.path.realpath(ns["path"])
                          for ns in spec["linux"]["namespaces"]
                          if ns.get("type") == "network" and ns.get("path")}
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(p for p in paths if os.path.exists(p))

    def _kill_shims(self) -> int:
        """containerd-shim processes serving our socket (they outlive a stopped containerd)."""
        count = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ours = argv and b"containerd-shim" in argv[0] and \
                self.containerd_address.encode() in argv
            if ours and terminate(int(entry.name), grace=3):
                count += 1
        return count

    # ------------------------------------------------------------------ kubelet
    def _write_kubelet_files(self, server: str) -> None:
        pki_dir = self.dir / "pki"
        crt, key = issue_client_cert(self.pki, user=f"system:node:{self.name}",
                                     groups=["system:nodes"], out_dir=pki_dir)
        serving_crt, serving_key = issue_serving_cert(
            self.pki, name=self.name, ips=[self.net.node_ip, "127.0.0.1"], dns=[self.name],
            out_dir=pki_dir)
        (self.dir / "kubelet.kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": server, "certificate-authority": str(self.pki.ca_crt)}}],
            "users": [{"name": "node", "user": {"client-certificate": str(crt),
                                                "client-key": str(key)}}],
            "contexts": [{"name": "node", "context": {"cluster": "local", "user": "node"}}],
            "current-context": "node",
        }, indent=1))
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.net.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(serving_crt),
            "tlsPrivateKeyFile": str(serving_key),
            # The API server presents a client certificate of our CA; anything else asks
            # the API server (TokenReview / SubjectAccessReview). No anonymous access.
            "authentication": {"anonymous": {"enabled": False},
                               "webhook": {"enabled": True, "cacheTTL": "30s"},
                               "x509": {"clientCAFile": str(self.pki.ca_crt)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_address}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "failCgroupV1": False,       # these machines mount cgroup v1 hierarchies
            "failSwapOn": False,
            "podLogsDir": str(self.dir / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "registerWithTaints": [{"key": NODE_KIND_LABEL, "value": "real",
                                    "effect": "NoSchedule"}],
            # No registry to pull from: never garbage-collect imported images; evict late.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "containerLogMaxSize": "10Mi",
            "containerLogMaxFiles": 2,
        }
        (self.dir / "kubelet.yaml").write_text(json.dumps(config, indent=1))

    def _kubelet_args(self) -> list[str]:
        return [
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.kubelet_root}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.net.node_ip}",
            f"--node-labels={NODE_KIND_LABEL}=real",
            "--v=1",
        ]

    def _drain(self, kubectl: Kubectl) -> None:
        """Cordon, delete the node's pods and wait (≤ 30 s) so the kubelet stops each sandbox
        through CRI: that tears down its network and netns the regular way."""
        kubectl("cordon", self.name, check=False, timeout=15)
        selector = f"spec.nodeName={self.name}"
        kubectl("delete", "pods", "-A", "--field-selector", selector, "--grace-period=2",
                "--wait=false", check=False, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = kubectl("get", "pods", "-A", "--field-selector", selector, "-o", "name",
                           check=False, timeout=15)
            if left.returncode != 0 or not left.stdout.strip():
                break
            time.sleep(0.5)
        else:
            _log(f"warning: pods still on {self.name} after 30s; killing them")
        # The kubelet stops sandboxes shortly after the pods are gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._sandbox_netns():
            time.sleep(0.3)

    # ------------------------------------------------------------------ processes
    def _start(self, name: str, argv: list[str]) -> None:
        pid = start_logged(argv, name=name, logs=self.logs, pids=self.pids, cwd=self.dir)
        _log(f"started {name} (pid {pid}, log {self.logs / (name + '.log')})")

    def _pid(self, name: str) -> int | None:
        return read_pid(self.pids, name)

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and pid_alive(pid)

    def _stop(self, name: str) -> bool:
        pid = self._pid(name)
        stopped = bool(pid and terminate(pid, grace=15))
        (self.pids / f"{name}.pid").unlink(missing_ok=True)
        return stopped

    def _wait(self, probe: Callable[[], bool], what: str, timeout: float, proc: str) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            log = self.logs / f"{proc}.log"
            if not self._alive(proc):
                raise NodeError(f"{proc} exited while waiting for {what}; see {log}; "
                                f"last lines:\n{tail(log, 30)}")
            if time.monotonic() > deadline:
                raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}; see {log}; "
                                f"last lines:\n{tail(log, 30)}")
            time.sleep(0.2)

    @staticmethod
    def _unmount(prefixes: list[str]) -> int:
        count = 0
        for point in _mounts_under(prefixes):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            count += 1
        left = _mounts_under(prefixes)
        if left:
            _log(f"warning: still mounted: {', '.join(left[:5])}")
        return count
