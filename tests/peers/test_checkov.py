"""checkov (framework kubernetes) on the chart as Helm renders it, default and every feature on.

Same policy as kube-score: fix the chart, or list the check here with why it stays. One checkov
run serves both tests (it takes a while to start); the skip list is applied to its report.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.peers.conftest import peer

# check id -> why the chart does not follow it.
SKIPPED = {
    "CKV_K8S_11": "no CPU limit on purpose: CFS throttling of the webhook server risks admission "
                  "timeouts; the CPU request reserves its share (memory is limited)",
    "CKV_K8S_15": "IfNotPresent with versioned tags; Always cannot work for images loaded into "
                  "nodes without a registry (kind load, ctr import)",
    "CKV_K8S_43": "the image reference is the user's (image.repository/tag); a digest is theirs to "
                  "set, images built here have none until pushed",
    "CKV_K8S_38": "the operator and the uninstall hook both call the API server: the token is needed",
    "CKV_K8S_155": "the operator registers its own webhook configurations at run time: create "
                   "cannot be limited by name; get/update are, to the chart's two names",
    "CKV2_K8S_6": "sources differ per cluster (API server -> webhook, Prometheus -> metrics); a "
                  "NetworkPolicy is the cluster admin's, not shipped (noted)",
}


@pytest.fixture(scope="module")
def report(chart_default: Path, chart_full: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """checkov's JSON report over both renderings; offline (--skip-download), no skips."""
    home = tmp_path_factory.mktemp("checkov-home")
    proc = subprocess.run(
        [str(peer("checkov")), "--framework", "kubernetes", "--skip-download", "--quiet",
         "--output", "json", "-f", str(chart_default), "-f", str(chart_full)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(home)})
    assert proc.stdout.lstrip().startswith("{"), \
        f"checkov failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(proc.stdout)
    assert data["summary"]["parsing_errors"] == 0, data["summary"]
    return data


def failed(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["check_id"], c["resource"].split(".helm.sh/")[0], c["check_name"])
            for c in report["results"].get("failed_checks", [])]


def test_chart_has_no_new_checkov_findings(report: dict[str, Any]) -> None:
    assert report["summary"]["passed"] > 100, report["summary"]   # it really ran its checks
    new = [f for f in failed(report) if f[0] not in SKIPPED]
    assert not new, "checkov: fix the chart or add the check to SKIPPED with a reason:\n" \
        + "\n".join(f"  {check} {resource}: {name}" for check, resource, name in new)


def test_every_skipped_check_still_fires(report: dict[str, Any]) -> None:
    stale = sorted(set(SKIPPED) - {f[0] for f in failed(report)})
    assert not stale, f"no longer flagged, remove from SKIPPED: {stale}"
