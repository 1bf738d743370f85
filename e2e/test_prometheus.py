"""A profile's alerts become a PrometheusRule; a real Prometheus (the Debian package) loads it,
scrapes the operator and fires the same alert the operator fires."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import E2E_METRICS_PORT
from e2e.harness.cluster import LocalCluster
from e2e.test_monitoring import DEPLOYMENT, PROFILE, app_load, get_json, sidecar_socket

pytestmark = [
    pytest.mark.usefixtures("operator"),
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus is not installed: run `make debs`"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


def test_alerts_become_a_prometheus_rule_that_prometheus_fires(
        cluster: LocalCluster, namespace: str, wait_for: Any, tmp_path: Path) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    rule = wait_for(lambda: cluster.kubectl("get", "prometheusrule", "perfpilot-watched", "-n",
                                            namespace, "-o", "json", check=False).stdout,
                    "PrometheusRule perfpilot-watched", timeout=60)
    rule = json.loads(rule)
    owner = rule["metadata"]["ownerReferences"][0]
    profile_uid = get_json(cluster, "perfprofile", "watched", "-n", namespace)["metadata"]["uid"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PerfProfile", "watched", profile_uid)
    [group] = rule["spec"]["groups"]
    [alert] = group["rules"]
    assert alert["alert"] == "AnswersSlow" and alert["labels"]["severity"] == "critical"

    # promtool accepts it, and Prometheus evaluates it against the operator's /metrics.
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "perfpilot-operator",
                            "static_configs": [{"targets": [f"127.0.0.1:{E2E_METRICS_PORT}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, "Prometheus ready", timeout=60)
        pod = wait_for(lambda: next((p["metadata"]["name"] for p in get_json(
            cluster, "pods", "-n", namespace, "-l", "app=watched")["items"]
            if p["status"].get("podIP")), None), "the first pod")
        sock = wait_for(lambda: sidecar_socket(cluster, namespace, pod), "the sidecar socket",
                        timeout=60)

        def firing() -> list[dict[str, Any]]:
            alerts = _get(f"{base}/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"].get("alertname") == "AnswersSlow"
                    and a["labels"].get("namespace") == namespace and a["state"] == "firing"]

        with app_load(sock, [0.2]):
            [fired] = wait_for(firing, "AnswersSlow firing in Prometheus", timeout=90)
        assert fired["labels"]["perfpilot_profile"] == "watched"
        assert float(fired["value"]) > 0.1
    finally:
        prom.terminate()
        prom.wait(timeout=20)

    # No alerts left in the profile: the PrometheusRule goes too.
    cluster.kubectl("patch", "perfprofile", "watched", "-n", namespace, "--type=json", "-p",
                    '[{"op": "remove", "path": "/spec/alerts"}]')
    wait_for(lambda: cluster.kubectl("get", "prometheusrule", "perfpilot-watched", "-n",
                                     namespace, check=False).returncode != 0,
             "the PrometheusRule to be deleted", timeout=60)
