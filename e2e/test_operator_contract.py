"""The live-config contract on the real control plane, operator and sidecar processes included:
profiles the CRD documents as valid are applied by every sidecar, which stays Ready (issue 9: a
`cache.ttl: 0s` profile used to crash-loop the sidecar at start and fail every Configure)."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.harness.cluster import LocalCluster
from e2e.test_operator import agent_config, get_json, profile_status

pytestmark = pytest.mark.usefixtures("operator")

PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: agents}
spec:
  selector: {matchLabels: {app: agent}}
  pools: {processWorkers: 0, maxQueue: 64}
  cache: {ttl: 0s, maxEntries: 0}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent}
spec:
  replicas: 2
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent, perfpilot.io/inject: "true"}}
    spec:
      containers: [{name: agent, image: example.invalid/agent:1}]
"""


def test_caching_off_and_max_queue_alone_configure_every_sidecar(cluster: LocalCluster, namespace: str,
                                                                  wait_for: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    def configured(gen: int) -> dict[str, Any] | None:
        st = profile_status(cluster, namespace)
        pods = st.get("pods", {})
        ok = (st.get("observedGeneration") == gen and pods.get("selected") == 2
              and pods.get("configured") == 2 and pods.get("unhealthy", 0) == 0)
        return st if ok else None

    st = wait_for(lambda: configured(1), "2/2 sidecars configured at generation 1", timeout=90)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", st["conditions"]
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=agent")["items"]
    assert all(cs.get("restartCount", 0) == 0 for p in pods
               for cs in p["status"].get("initContainerStatuses", []) + p["status"].get("containerStatuses", []))
    for p in pods:  # the sidecars themselves: the ground truth
        cfg = agent_config(cluster, namespace, p["status"]["podIP"])
        assert cfg.generation == 1
        assert (cfg.config.cache.ttl.seconds, cfg.config.cache.ttl.nanos, cfg.config.cache.max_entries) == (0, 0, 0)
        assert (cfg.config.pools.max_queue, cfg.config.pools.batch_size) == (64, 64)
        assert not cfg.config.cache.l1.enabled  # the apps' near-cache: off unless the profile says so

    # Caching back on, live: a Configure the sidecars accept.
    cluster.kubectl("patch", "perfprofile", "agents", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"cache": {"ttl": "30s", "maxEntries": 100, "l1": {"enabled": true, "maxEntries": 500}}}}')
    wait_for(lambda: configured(2), "2/2 sidecars configured at generation 2", timeout=60)
    for p in pods:
        cfg = agent_config(cluster, namespace, p["status"]["podIP"])
        assert (cfg.config.cache.ttl.seconds, cfg.config.cache.max_entries) == (30, 100)
        l1 = cfg.config.cache.l1  # what every app client of this sidecar now applies, live
        assert (l1.enabled, l1.max_entries, l1.max_bytes, l1.ttl.seconds) == (True, 500, 16 << 20, 10)
