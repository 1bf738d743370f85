"""cache.shared on the real control plane: the webhook gives each sidecar the password and the
private CA from Secrets in the app's namespace (the operator never reads them), the replicas'
sidecars connect over TLS (rediss://) to a real redis-server that requires the password and
presents a certificate of a throw-away CA nothing else trusts (tls.caSecret), and removing
cache.shared from the profile disconnects them live.

What the tier does between replicas (hits, invalidations, outage, recovery) is covered against the
same real redis-server by tests/sidecar/test_shared_tier.py; here the cluster's part is checked, by
asking Redis itself who is connected (CLIENT LIST shows each sidecar's client name, its pod's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from e2e.harness import redisserver
from e2e.harness.cluster import LocalCluster
from perfpilot_contract.sharedcache import CA_ENV, PASSWORD_ENV

pytestmark = [pytest.mark.usefixtures("operator"),
              pytest.mark.skipif(redisserver.binary() is None, reason="redis-server is not installed (make debs)")]
PASSWORD = "e2e-redis-pw"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redisserver.RedisServer]:
    tls = redisserver.throwaway_tls(tmp_path / "tls")
    with redisserver.RedisServer(redisserver.port_for(4), password=PASSWORD, tls=tls) as server:
        yield server


def _profile(url: str) -> str:
    return f"""
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {{name: shared}}
spec:
  selector: {{matchLabels: {{app: shared}}}}
  pools: {{processWorkers: 0}}
  cache:
    ttl: 5m
    shared: {{url: "{url}", credentialsSecret: {{name: redis-auth, key: password}}, keyPrefix: "e2e:",
             tls: {{caSecret: {{name: redis-tls, key: ca.crt}}}}}}
"""


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: shared}
spec:
  replicas: 2
  selector: {matchLabels: {app: shared}}
  template:
    metadata: {labels: {app: shared, perfpilot.io/inject: "true"}}
    spec:
      containers: [{name: agent, image: example.invalid/agent:1}]
"""


def _json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _sidecar_clients(server: redisserver.RedisServer) -> set[str]:
    assert server.tls is not None
    client = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD, socket_timeout=5, ssl=True,
                         ssl_ca_certs=str(server.tls.ca))
    try:
        return {c["name"] for c in client.client_list() if c.get("name", "").startswith("perfpilot:")}
    finally:
        client.close()


def test_replicas_connect_with_the_secrets_password_and_disconnect_live(
        cluster: LocalCluster, namespace: str, wait_for: Any, redis_server: redisserver.RedisServer) -> None:
    cluster.kubectl("create", "secret", "generic", "redis-auth", "-n", namespace,
                    f"--from-literal=password={PASSWORD}")
    assert redis_server.tls is not None and redis_server.url.startswith("rediss://")
    cluster.kubectl("create", "secret", "generic", "redis-tls", "-n", namespace,
                    f"--from-file=ca.crt={redis_server.tls.ca}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_profile(redis_server.url))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    def both_with_ips() -> list[dict[str, Any]] | None:   # both replicas, not the first to get an IP
        pods = [p for p in _json(cluster, "pods", "-n", namespace, "-l", "app=shared")["items"]
                if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == 2 else None
    pods = wait_for(both_with_ips, "both replicas' pods with IPs", timeout=60)
    names = {f"perfpilot:{p['metadata']['name']}" for p in pods}
    for pod in pods:  # a reference to the Secret, never its value
        sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "perfpilot-agent")
        env = {e["name"]: e for e in sidecar["env"]}
        assert env[PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password",
                                                                  "optional": True}
        assert env[CA_ENV]["valueFrom"]["secretKeyRef"] == {"name": "redis-tls", "key": "ca.crt", "optional": True}
        assert PASSWORD not in json.dumps(pod["spec"])
    wait_for(lambda: _sidecar_clients(redis_server) >= names or None,
             "both replicas' sidecars connected to Redis over TLS (the Secret's CA) with the Secret's password",
             timeout=90)
    assert PASSWORD not in json.dumps(_json(cluster, "perfprofile", "shared", "-n", namespace))

    # Removing cache.shared is applied live: the sidecars close their connections, no pod restarts.
    cluster.kubectl("patch", "perfprofile", "shared", "-n", namespace, "--type=json", "-p",
                    '[{"op": "remove", "path": "/spec/cache/shared"}]')
    wait_for(lambda: not (_sidecar_clients(redis_server) & names) or None,
             "the sidecars to disconnect after cache.shared was removed", timeout=90)
    after = _json(cluster, "pods", "-n", namespace, "-l", "app=shared")["items"]
    assert {p["metadata"]["uid"] for p in after} == {p["metadata"]["uid"] for p in pods}
