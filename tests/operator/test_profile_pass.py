"""The resync beat over a faked cluster: Kubernetes API calls per pass (counted), the status
patched only when it changes, the coverage watchdog, and the scaler holding on missing stats."""

from __future__ import annotations

from collections import Counter

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator.clients.agents import Target
from perfpilot_operator.logic.status import condition
from tests.operator.fakecluster import LOG, Cluster, FakeScale, FakeSidecars, pods, runtime

NAMESPACES = ("a", "b", "c")


def steady(cluster: Cluster, sidecars: FakeSidecars) -> None:
    for ns in NAMESPACES:
        cluster.add(ns, {"pools": {"maxQueue": 7}}, pods(3))
    sidecars.generations.update({f"127.1.0.{i}": 1 for i in range(3)})


async def test_a_steady_pass_reads_nothing_an_index_or_watch_has() -> None:
    sidecars = FakeSidecars({})
    cluster = Cluster(runtime(sidecars))
    steady(cluster, sidecars)
    first = Counter(await cluster.beat())
    # The first pass writes each profile's status once; the PrometheusRule API is discovered
    # once per operator (and re-checked once a minute while absent).
    assert first == {"PATCH perfprofiles/prof/status": 3,
                     "GET monitoring.coreos.com/v1 (discovery)": 1}, first
    cluster.deliver_status()
    for _ in range(3):
        calls = Counter(await cluster.beat())
        # No LIST of the profiles (kopf's index), no status patch when nothing changed, no
        # Secret (the sidecars trust the operator's client certificate): no API call at all.
        assert calls == {}, calls
    print(f"\nAPI calls per resync beat over {len(NAMESPACES)} profiles: first {sum(first.values())}"
          f" ({dict(first)}), steady {sum(calls.values())} ({dict(calls)})")


async def test_a_status_not_yet_delivered_by_the_watch_is_not_written_or_announced_again() -> None:
    sidecars = FakeSidecars({"127.1.0.0": 1, "127.1.0.1": 1})
    cluster = Cluster(runtime(sidecars))
    cluster.add("a", {}, pods(1) + pods(1, injected=False, prefix="plain", opted_in=False))
    first = await cluster.beat()
    assert "PATCH perfprofiles/prof/status" in first
    assert [r for r, _ in cluster.rt.kube.events] == ["PodsWithoutSidecar"]
    # The index still holds the status before the patch (same resourceVersion).
    again = await cluster.beat()
    assert "PATCH perfprofiles/prof/status" not in again and "POST events" not in again, again
    assert len(cluster.rt.kube.events) == 1


async def test_a_status_patch_that_failed_is_made_again_in_the_next_pass() -> None:
    cluster = Cluster(runtime(FakeSidecars({"127.1.0.0": 1})))
    cluster.add("a", {}, pods(1))
    kube = cluster.rt.kube
    patch = kube.patch_profile_status

    async def unavailable(namespace: str, name: str, status: dict[str, object]) -> None:
        kube.calls.append("PATCH perfprofiles/prof/status (503)")
        raise ConnectionError("the API server restarts")

    kube.patch_profile_status = unavailable
    assert "PATCH perfprofiles/prof/status (503)" in await cluster.beat()
    kube.patch_profile_status = patch
    assert "PATCH perfprofiles/prof/status" in await cluster.beat()


async def test_audit_advice_names_the_deployment_and_the_watchdog_restarts_it_once() -> None:
    sidecars = FakeSidecars({"127.1.0.9": 1})
    web = pods(2, injected=False, owner=("ReplicaSet", "web-5d8f"), prefix="web-")
    for recreate in (False, True):
        rt = runtime(sidecars, recreate_uninjected=recreate, recreate_interval=600.0)
        rt.replicaset_owners = {("a", "web-5d8f"): [("Deployment", "web")]}
        cluster = Cluster(rt)
        cluster.add("a", {}, web)
        calls = await cluster.beat()
        cluster.deliver_status()
        message = condition(cluster.profiles["a"][0]["status"], "InjectionComplete")["message"]
        assert "2 of 2 selected pods run without the sidecar" in message
        assert message.endswith("re-create them: kubectl rollout restart deployment/web"), message
        restarts = [c for c in calls if c.startswith("PATCH deployments/")]
        assert restarts == (["PATCH deployments/web"] if recreate else []), calls
        reasons = [r for r, _ in rt.kube.events]
        assert ("RestartedUninjected" in reasons) == recreate, reasons
        # The old pods are still there while the Deployment replaces them: no second restart
        # within the interval.
        assert not [c for c in await cluster.beat() if c.startswith("PATCH deployments/")]


async def test_a_bare_pod_is_never_restarted() -> None:
    rt = runtime(FakeSidecars({}), recreate_uninjected=True)
    cluster = Cluster(rt)
    cluster.add("a", {}, pods(1, injected=False, prefix="solo"))
    calls = await cluster.beat()
    assert not [c for c in calls if c.startswith("PATCH deployments/")]
    cluster.deliver_status()
    message = condition(cluster.profiles["a"][0]["status"], "InjectionComplete")["message"]
    assert "delete and re-create pod solo0" in message


class Loaded(FakeSidecars):
    """Sidecars reporting a queue depth (a gauge: counts from the first look)."""

    depth = 1.0

    async def get_stats(self, target: Target) -> pb.GetStatsResponse:
        r = await super().get_stats(target)
        r.pool.queue_depth = int(self.depth)
        return r


AUTOSCALED = {"target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
              "autoscaling": {"maxReplicas": 10, "metric": "queue_depth", "target": 1,
                              "interval": "0s"}}


async def test_the_scaler_holds_while_stats_are_missing_and_resumes_after() -> None:
    sidecars = Loaded({"127.1.0.0": 1, "127.1.0.1": 1})
    scale = FakeScale(2)
    cluster = Cluster(runtime(sidecars, scale=scale))
    cluster.add("a", AUTOSCALED, pods(2))

    async def scaling() -> dict[str, str]:
        await cluster.beat()
        cluster.deliver_status()
        return condition(cluster.profiles["a"][0]["status"], "ScalingActive")

    assert (await scaling())["reason"] == "WithinTolerance"
    sidecars.depth = 50.0                        # the load rises while one sidecar is silent
    sidecars.down = {"127.1.0.1"}
    held = await scaling()
    assert (held["status"], held["reason"]) == ("False", "MetricsIncomplete"), held
    assert "1 sidecar(s) did not answer GetStats; holding 2 replicas" in held["message"]
    sidecars.down = {"127.1.0.0", "127.1.0.1"}     # a whole metrics outage
    held = await scaling()
    assert (held["reason"], scale.writes) == ("MissingMetrics", []), held
    assert "no sidecar answered GetStats (2 unreachable); holding 2 replicas" in held["message"]
    degraded = condition(cluster.profiles["a"][0]["status"], "Degraded")
    assert degraded["reason"] == "SidecarsUnreachable"
    sidecars.down = set()                        # back: it decides on the data again
    assert (await scaling())["reason"] == "ScaledUp"
    assert scale.writes == [6]                   # +4 (the default up-step limit)


async def test_a_spec_change_is_applied_by_the_event_handler_with_the_kwargs_kopf_passes() -> None:
    """The on.event handler, called with exactly the kwargs kopf gives a resource event handler
    (no `settings`: kopf passes those to activity handlers only), configures the sidecars at
    once on the leader and does nothing on a follower."""
    import kopf

    from perfpilot_operator.handlers.profiles import reconcile
    from perfpilot_operator.leader import Leadership, always_leader

    for leads in (False, True):
        sidecars = FakeSidecars({"127.1.0.0": 1})
        rt = runtime(sidecars)
        rt.kopf_settings = kopf.OperatorSettings()
        rt.leadership = always_leader("me") if leads else Leadership(identity="me")
        cluster = Cluster(rt)
        cluster.add("a", {}, pods(1), generation=2)
        rt.pods = cluster.pods
        body = kopf.Body(cluster.profiles["a"][0])
        await reconcile(event={"type": "MODIFIED", "object": dict(body)}, body=body,
                        meta=body.meta, spec=body.spec, status=body.status, uid="uid-a",
                        name="prof", namespace="a", patch=kopf.Patch(), logger=LOG,
                        memo=kopf.Memo(runtime=rt), resource=None, type="MODIFIED",
                        pods_by_namespace=cluster.pods)
        assert sidecars.configured == (["127.1.0.0"] if leads else []), (leads, sidecars.configured)
        assert (("a", "prof") in rt.kube.status) is leads


async def test_the_shared_cache_condition_reports_what_the_sidecars_say() -> None:
    """SharedCacheAvailable appears only with a configured tier, and follows the sidecars'
    reports: one sidecar down makes it False naming the pod and its error, back up makes it True."""
    sidecars = FakeSidecars({"127.1.0.0": 1, "127.1.0.1": 1})
    cluster = Cluster(runtime(sidecars))
    cluster.add("a", {}, pods(2))
    calls = await cluster.beat()
    assert "PATCH perfprofiles/prof/status" in calls, (calls, cluster.rt.kube.status)
    cluster.deliver_status()
    assert condition(cluster.profiles["a"][0]["status"], "SharedCacheAvailable") == {}
    sidecars.shared = {"127.1.0.0": pb.SharedCacheStats(configured=True, up=True),
                       "127.1.0.1": pb.SharedCacheStats(configured=True, up=False,
                                                        last_error="connection refused")}
    await cluster.beat()
    cluster.deliver_status()
    got = condition(cluster.profiles["a"][0]["status"], "SharedCacheAvailable")
    assert (got["status"], got["reason"]) == ("False", "Disconnected"), got
    assert "p1: connection refused" in got["message"] and "1 of 2" in got["message"], got
    assert condition(cluster.profiles["a"][0]["status"], "Ready")["status"] == "True"   # information only
    sidecars.shared["127.1.0.1"] = pb.SharedCacheStats(configured=True, up=True)
    await cluster.beat()
    cluster.deliver_status()
    got = condition(cluster.profiles["a"][0]["status"], "SharedCacheAvailable")
    assert (got["status"], got["reason"]) == ("True", "Connected"), got
