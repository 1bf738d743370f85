"""`cluster-up` then `cluster-down` on a second, private cluster leaves nothing behind: no
process, and (its real node) no shim, mount, netns, cgroup or bridge; host sysctls restored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.harness.cluster import ROOT, Ports, _processes_mentioning
from e2e.harness.node import SYSCTL_SAVE, NodeNetwork, RealNode, _mounts_under, enabled

pytestmark = pytest.mark.local_harness


def _anything_mentioning(needle: str) -> list[str]:
    """Every process (any binary: containerd, shims included) whose command line names needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmd:
                found.append(f"{entry.name}: {cmd[:160]}")
    return found


def _netns() -> set[str]:
    d = Path("/run/netns")
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def test_up_then_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    base = Ports().base + 100       # beside this suite's own cluster, never on it
    env = dict(os.environ, PERFPILOT_STATE=str(state), PERFPILOT_PORT_BASE=str(base),
               PERFPILOT_KWOK_NODES="1")
    net = NodeNetwork.for_base(base)
    cgroups = list(Path("/sys/fs/cgroup").glob(f"*/perfpilot-node-{net.octet}"))
    assert not cgroups and not Path(f"/sys/class/net/{net.bridge}").exists(), \
        "a previous run left the node's cgroups or bridge behind"
    sysctls_before = RealNode._read_sysctls()
    netns_before = _netns()
    cmd = [sys.executable, "-m", "e2e.harness.cluster"]
    up = subprocess.run([*cmd, "up"], cwd=ROOT, env=env, capture_output=True, check=False, text=True,
                        timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "cluster up in" in up.stdout and "set-up phases:" in up.stdout
    assert (state / "kubeconfig").exists()
    running = _processes_mentioning(str(state))
    expected = 6 if enabled() else 5
    assert len(running) == expected, \
        f"expected etcd, apiserver, KCM, scheduler, kwok (+ kubelet); got {running}"

    status = subprocess.run([*cmd, "status"], cwd=ROOT, env=env, capture_output=True, check=False,
                            text=True, timeout=60)
    assert "ready                      yes" in status.stdout, status.stdout
    if enabled():
        assert "kubelet                    yes" in status.stdout, status.stdout
        assert "containerd                 yes" in status.stdout, status.stdout
        assert Path(f"/sys/class/net/{net.bridge}").exists()
        assert list(Path("/sys/fs/cgroup").glob(f"*/perfpilot-node-{net.octet}/kubepods"))

    down = subprocess.run([*cmd, "down"], cwd=ROOT, env=env, capture_output=True, check=False, text=True,
                          timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd" in down.stdout
    assert _processes_mentioning(str(state)) == []
    assert _anything_mentioning(str(state)) == []          # containerd and its shims too
    assert _mounts_under([str(state)]) == []
    assert _netns() <= netns_before
    assert not Path(f"/sys/class/net/{net.bridge}").exists()
    assert list(Path("/sys/fs/cgroup").glob(f"*/perfpilot-node-{net.octet}")) == []
    others = [p for p in Path("/sys/class/net").glob("ppnode*")]
    if not others:
        # The last real node on the machine puts the kubelet's and CNI's sysctls back.
        assert RealNode._read_sysctls() == sysctls_before
        assert not SYSCTL_SAVE.exists()
    else:
        # Another cluster's node still runs: it owns the saved values and restores them.
        assert SYSCTL_SAVE.exists(), others
        assert json.loads(SYSCTL_SAVE.read_text())
