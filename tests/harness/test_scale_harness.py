"""The scale harness's pure parts: node sizing, the API server's counter and histogram parsing,
which pods the agent fleet hosts and the app latencies it plays, and how the benchmark turns the
fleet's record into a pass duration."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from perfpilot_agent.config import load_settings
from perfpilot_operator.logic.injection import SOCKET_DIR, SidecarTemplate

from bench.scale_bench import resync_ticks, sweeps
from bench.scale_webhook import bucket_quantile
from e2e.harness.fleet import Fleet, deployment_of, read_load, wanted
from e2e.harness.podrunner import map_paths, short_volumes_root
from e2e.harness.scale import ScaleSpec, deployment_doc, parse_counter, parse_histogram


def test_nodes_leave_room_for_every_pod_beside_the_two_default_ones() -> None:
    spec = ScaleSpec()
    added = spec.nodes() - 2
    assert added * spec.pods_per_node >= 1.25 * (spec.injected + spec.other_pods)
    assert spec.injected == 1000 and spec.profiles == 100 and len(spec.targets()) == 100


def test_sample_deployments_are_left_to_the_pod_runner() -> None:
    assert deployment_doc("a", 3, fleet=True)["spec"]["template"]["metadata"]["labels"][
        "perfpilot.io/host"] == "fleet"
    assert "perfpilot.io/host" not in deployment_doc("a", 3, fleet=False)["spec"]["template"][
        "metadata"]["labels"]


def test_parse_counter_sums_the_matching_series_only() -> None:
    text = "\n".join([
        '# TYPE apiserver_flowcontrol_dispatched_requests_total counter',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="perfpilot-operator",'
        'priority_level="workload-high"} 12',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",'
        'priority_level="exempt"} 900',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="perfpilot-operator",'
        'priority_level="other"} 3.5',
    ])
    assert parse_counter(text, "apiserver_flowcontrol_dispatched_requests_total",
                         {"flow_schema": "perfpilot-operator"}) == 15.5


def _pod(**over: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"annotations": {"perfpilot.io/injected": "true"}},
        "spec": {"initContainers": [{"name": "perfpilot-agent"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Running", "podIP": "127.41.3.4"}}
    for k, v in over.items():
        pod[k] = {**pod[k], **v}
    return pod


def test_the_fleet_hosts_injected_running_pods_with_an_ip_only() -> None:
    assert wanted(_pod())
    assert not wanted(_pod(status={"phase": "Pending"}))
    assert not wanted(_pod(status={"podIP": None}))
    assert not wanted(_pod(metadata={"annotations": {}, "deletionTimestamp": None}))
    assert not wanted(_pod(metadata={"annotations": {"perfpilot.io/injected": "true"},
                                     "deletionTimestamp": "2026-01-01T00:00:00Z"}))


def test_a_pass_lasts_until_every_sidecar_was_asked_after_the_tick() -> None:
    log = ("[2026-11-29 16:00:00,000] perfpilot_operator.r [INFO    ] resync pass over 0 "
           "profile(s) started\n"
           "[2026-11-29 16:00:10,500] perfpilot_operator.r [INFO    ] resync pass over 2 "
           "profile(s) started (1 still busy from the previous one)\n")
    ticks = resync_ticks(log)
    assert len(ticks) == 1                  # passes over no profile are not passes
    t = ticks[0]
    records = [(t - 1.0, "stats", "ns/a", 1), (t + 0.5, "stats", "ns/a", 1),
               (t + 2.0, "stats", "ns/b", 1), (t + 1.0, "configure", "ns/c", 2),
               (t + 3.0, "stats", "ns/a", 1)]
    assert sweeps(records, ticks, t - 5, t + 5, sidecars=2) == [2.0]
    # A sidecar never asked after the tick: no complete pass to report.
    assert sweeps(records[:2], ticks, t - 5, t + 5, sidecars=2) == []
    assert all(math.isfinite(x) for x in sweeps(records, ticks, t - 5, t + 5, 1))


HIST = "\n".join([
    "# TYPE apiserver_admission_webhook_admission_duration_seconds histogram",
    *(f'apiserver_admission_webhook_admission_duration_seconds_bucket{{name="{name}",'
      f'operation="CREATE",rejected="false",type="admit",le="{le}"}} {n}'
      for name, counts in (("sidecar-injector.perfpilot.io", (10, 90, 99, 100)),
                           ("other.example.com", (1, 2, 3, 4)))
      for le, n in zip(("0.005", "0.025", "0.1", "+Inf"), counts)),
    'apiserver_admission_webhook_admission_duration_seconds_sum{name="x"} 3.0',
])


def test_parse_histogram_reads_one_webhooks_buckets_by_upper_bound() -> None:
    h = parse_histogram(HIST, "apiserver_admission_webhook_admission_duration_seconds",
                        {"name": "sidecar-injector.perfpilot.io", "type": "admit"})
    assert h == {0.005: 10, 0.025: 90, 0.1: 99, math.inf: 100}


def test_bucket_quantile_interpolates_between_scrapes_like_promql() -> None:
    before = {0.005: 10.0, 0.025: 10.0, 0.1: 10.0, math.inf: 10.0}
    after = {0.005: 10.0, 0.025: 90.0, 0.1: 110.0, math.inf: 110.0}   # 80 + 20 new calls
    assert math.isclose(bucket_quantile(before, after, 0.5), 0.005 + 0.020 * 50 / 80)
    assert math.isclose(bucket_quantile(before, after, 0.99), 0.025 + 0.075 * 19 / 20)
    assert math.isnan(bucket_quantile(after, after, 0.99))          # nothing in between
    over = {**after, math.inf: 120.0}                                 # 10 beyond the last bound
    assert bucket_quantile(before, over, 0.99) == 0.1


def test_the_fleet_plays_the_load_files_latencies_into_the_agents_of_those_deployments(
        tmp_path: Path) -> None:
    assert deployment_of("ns-1/app-3-5d8f7c-x2x9q") == "ns-1/app-3"
    load = tmp_path / "load"
    assert read_load(load) == {}                        # absent: no traffic
    load.write_text('{"ns-1/app-3": 0.2')
    assert read_load(load) == {}                        # half-written: no traffic yet

    class Monitor:
        def __init__(self) -> None:
            self.seen: list[tuple[str, list[float]]] = []

        def record_timings(self, request: Any) -> None:
            self.seen += [(o.op, list(o.durations_seconds)) for o in request.ops]

    class App:
        def __init__(self) -> None:
            self.monitor = Monitor()

    fleet = Fleet.__new__(Fleet)       # no cluster: only the load player's state
    hit, miss = App(), App()
    fleet.apps = {"u1": hit, "u2": miss}
    fleet.keys = {"u1": "ns-1/app-3-5d8f7c-x2x9q", "u2": "ns-1/app-30-6c9d-abcde"}
    fleet.load_path, fleet.load_fed, fleet.record = load, {}, (tmp_path / "rec").open("a")
    load.write_text('{"ns-1/app-3": 0.2}')
    fleet.feed_load()
    fleet.feed_load()
    assert hit.monitor.seen == [("answer", [0.2] * 10)] * 2 and miss.monitor.seen == []
    load.write_text("{}")
    fleet.feed_load()
    assert len(hit.monitor.seen) == 2
    fleet.record.close()
    lines = [ln.split()[1:] for ln in (tmp_path / "rec").read_text().splitlines()]
    assert lines == [["latency", "ns-1/app-3", "200000"]]     # once per new value


def test_the_floor_webhook_allows_with_its_fixed_patch_for_the_reviews_uid() -> None:
    import base64
    import json

    from bench.floor_webhook import review_response

    patch = base64.b64encode(json.dumps([{"op": "add", "path": "/spec", "value": {}}]).encode())
    out = review_response({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u-7"}},
                          patch.decode())
    assert out["response"] == {"uid": "u-7", "allowed": True, "patchType": "JSONPatch",
                               "patch": patch.decode()}
    assert out["kind"] == "AdmissionReview" and out["apiVersion"] == "admission.k8s.io/v1"


async def test_the_fleet_moves_an_agent_whose_pod_ip_changed() -> None:
    from types import SimpleNamespace

    fleet = Fleet.__new__(Fleet)        # no cluster: only reconcile's bookkeeping
    moved, kept = _pod(status={"podIP": "127.41.3.9"}), _pod()
    fleet.pods = {"moved": moved, "kept": kept}
    fleet.apps = {u: SimpleNamespace(settings=SimpleNamespace(listen_host="127.41.3.4"))
                  for u in ("moved", "kept")}
    fleet.keys, fleet.failed = {}, {}
    calls: list[tuple[str, str]] = []

    async def stop_app(uid: str) -> None:
        calls.append(("stop", uid))
        del fleet.apps[uid]

    async def start_app(uid: str, pod: dict[str, Any]) -> None:
        calls.append(("start", uid))
        fleet.apps[uid] = SimpleNamespace(
            settings=SimpleNamespace(listen_host=pod["status"]["podIP"]))

    fleet.stop_app, fleet.start_app = stop_app, start_app   # type: ignore[method-assign]
    await fleet.reconcile()
    assert calls == [("stop", "moved"), ("start", "moved")]
    await fleet.reconcile()                                   # level: nothing more to do
    assert len(calls) == 2


def test_a_checkout_under_a_long_path_still_gives_each_agent_a_socket_path_that_fits(
        tmp_path: Path) -> None:
    """CI's checkout sat 6 bytes deeper than ours: the fleet's per-pod socket path passed the
    sidecar's 100-byte limit and the settings' SystemExit ended the whole fleet."""
    cluster: Any = SimpleNamespace(state=tmp_path / ("deep" * 40) / "e2e" / ".state-test")
    container = {"volumeMounts": [{"name": "perfpilot-socket", "mountPath": SOCKET_DIR}]}
    uid = "3f2a9c1e-7b4d-4e8a-9f60-1c2d3e4f5a6b"            # a pod uid's full length
    for kind in ("fleet", "pods"):
        root = short_volumes_root(cluster, kind)
        try:
            env = map_paths({"PERFPILOT_SOCKET": SidecarTemplate().socket_path}, container,
                            root / uid)
            settings = load_settings([], env=env)           # SystemExit when too long
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert settings.socket_path.startswith(str(root / uid))
    assert short_volumes_root(cluster, "fleet") != short_volumes_root(
        SimpleNamespace(state=tmp_path / "other"), "fleet")   # one per state dir
