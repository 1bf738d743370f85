"""Shared pieces of the independent-peer tests: where the peers live, the chart as Helm renders
it, and (re-exported) the in-process sidecar fixtures of tests/sidecar.

A missing peer skips its tests and says how to install it; `make test` installs them all first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.sidecar.conftest import make_agent, pki, sock_dir  # noqa: F401  (fixtures for tests here)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "perfpilot"
CACHE = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot"))
BIN = CACHE / "bin"
KUBE_VERSION = "1.35.0"   # what the local control plane reports (e2e/build-control-plane.sh)
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule", "monitoring.coreos.com/v1/PodMonitor")
# Every optional feature of the chart on (the monitoring APIs announced, as on a cluster with the
# Prometheus Operator); the webhook cleanup Job and the dashboards are on by default.
ALL_FEATURES = ("metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true",
                "sidecarMetrics.podMonitor.enabled=true")


def peer(name: str) -> Path:
    """The peer's binary, or a skip that says how to get it."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}: run `make peers` "
                    f"(bash scripts/ensure-peers.sh {name}); `make test` does it first")
    return path


def render_chart(out: Path, *sets: str) -> Path:
    """`helm template` of the chart into `out` (the file every peer reads)."""
    helm = peer("helm")
    args = [str(helm), "template", "pp", str(CHART), "-n", "perfpilot-system",
            "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    if sets:
        for api in MONITORING_APIS:
            args += ["--api-versions", api]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HELM_CACHE_HOME": str(out.parent / "helm-cache")})
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    out.write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def chart_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart rendered with its default values."""
    return render_chart(tmp_path_factory.mktemp("chart") / "default.yaml")


@pytest.fixture(scope="session")
def chart_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart rendered with every optional feature on."""
    return render_chart(tmp_path_factory.mktemp("chart") / "full.yaml", *ALL_FEATURES)
