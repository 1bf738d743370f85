"""`cluster-up` then `cluster-down` on a second, private cluster leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e.harness.cluster import ROOT, Ports, _processes_mentioning


def test_up_then_down_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # 100 above the suite's own ports, so suites of different port bases never collide.
    env = dict(os.environ, PERFPILOT_STATE=str(state), PERFPILOT_PORT_BASE=str(Ports().base + 100),
               PERFPILOT_KWOK_NODES="1")
    cmd = [sys.executable, "-m", "e2e.harness.cluster"]
    up = subprocess.run([*cmd, "up"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "cluster up in" in up.stdout
    assert (state / "kubeconfig").exists()
    running = _processes_mentioning(str(state))
    assert len(running) == 5, f"expected etcd, apiserver, KCM, scheduler, kwok; got {running}"

    status = subprocess.run([*cmd, "status"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert "ready                      yes" in status.stdout, status.stdout

    down = subprocess.run([*cmd, "down"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd" \
        in down.stdout
    assert _processes_mentioning(str(state)) == []
