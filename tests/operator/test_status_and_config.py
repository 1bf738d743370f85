from perfpilot_operator.logic.conditions import PodView, count_pods, set_condition
from perfpilot_operator.logic.desired import configure_request
from perfpilot_operator.logic.webhooks import client_config, mutating_configuration


def test_condition_transition_time_moves_only_on_flip() -> None:
    c = set_condition([], type="Ready", status=False, reason="A", message="m", generation=1,
                      now="t1")
    c = set_condition(c, type="Ready", status=False, reason="B", message="m", generation=2,
                      now="t2")
    assert c[0]["lastTransitionTime"] == "t1" and c[0]["reason"] == "B"
    c = set_condition(c, type="Ready", status=True, reason="C", message="m", generation=2,
                      now="t3")
    assert c[0]["lastTransitionTime"] == "t3" and c[0]["status"] == "True"


def test_pod_counts() -> None:
    pods = [PodView("a", "127.1.0.1", True, True, 3), PodView("b", "127.1.0.2", True, True, 2),
            PodView("c", "127.1.0.3", True, False), PodView("d", None, False, True),
            PodView("e", "127.1.0.5", True, True, 3, healthy=False)]
    counts = count_pods(pods, generation=3)
    assert counts.as_status() == {"selected": 4, "injected": 3, "configured": 2,
                                  "unhealthy": 1, "uninjected": 1}
    assert counts.uninjected == ("c",)


def test_configure_request_converts_units() -> None:
    req = configure_request({"pools": {"processWorkers": 3, "batchWait": "10ms"},
                             "cache": {"ttl": "5m", "maxEntries": 7},
                             "kernels": {"warm": ["cosine_topk"], "parallel": False}}, 4)
    assert req.generation == 4
    assert req.config.pools.process_workers == 3
    assert req.config.pools.batch_wait.ToNanoseconds() == 10_000_000
    assert req.config.cache.ttl.seconds == 300 and req.config.cache.max_entries == 7
    assert list(req.config.kernels.warm) == ["cosine_topk"] and not req.config.kernels.parallel
    assert not req.config.HasField("heartbeat")


def test_pod_webhook_excludes_operator_namespace_and_needs_opt_in() -> None:
    cfg = mutating_configuration(operator_namespace="perfpilot-system", failure_policy="Fail",
                                 client=client_config(path="inject-sidecar", ca_bundle=b"CA",
                                                      url_host="127.0.0.1", port=9443))
    hook = cfg["webhooks"][0]
    assert hook["objectSelector"] == {"matchLabels": {"perfpilot.io/inject": "true"}}
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["perfpilot-system"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/inject-sidecar"
    more = mutating_configuration(operator_namespace="perfpilot-system", failure_policy="Fail",
                                  client={}, exclude_namespaces=("kube-system", "perfpilot-system"))
    assert more["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system", "perfpilot-system"]
    svc = client_config(path="x", ca_bundle=b"CA", service="ns/op", port=443)
    assert svc["service"] == {"namespace": "ns", "name": "op", "path": "/x", "port": 443}
