from perfpilot_operator.logic import monitor as mon
from perfpilot_operator.logic.prometheusrule import render

PROFILE = {
    "metadata": {"name": "agents", "namespace": "ai", "uid": "u-1"},
    "spec": {"alerts": [
        {"name": "Slow", "metric": "app_latency_p99_seconds", "op": ">", "threshold": 0.1,
         "for": "1m30s", "severity": "critical", "description": "Answers are slow."},
        {"name": "LowHits", "metric": "cache_hit_ratio", "op": "<", "threshold": 0.5},
    ]},
}


def test_rules_mirror_the_alerts_over_the_operators_metric() -> None:
    obj = render(PROFILE, mon.alert_rules(PROFILE["spec"]))
    assert obj["metadata"]["name"] == "perfpilot-agents"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    slow, low = obj["spec"]["groups"][0]["rules"]
    assert slow["expr"] == ('perfpilot_operator_profile_metric{namespace="ai",profile="agents",'
                            'metric="app_latency_p99_seconds"} > 0.1')
    assert slow["for"] == "90s" and slow["labels"]["severity"] == "critical"
    assert slow["annotations"]["description"] == "Answers are slow."
    assert "for" not in low and low["expr"].endswith("< 0.5")
    assert low["labels"] == {"severity": "warning", "perfpilot_profile": "agents"}
