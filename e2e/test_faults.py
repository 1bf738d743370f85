"""Faults on the real control plane, each with a bounded recovery (issue 11 item 7): the operator
killed mid-rollout, kube-apiserver restarted, a sidecar's stats unreachable while its peers
report load. Each test prints its measured recovery time ("[fault] ..." lines, `pytest -s`);
the bounds are generous deadlines, not timing claims (bench/ measures)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.harness import dev
from e2e.harness.cluster import LocalCluster
from e2e.test_monitoring import app_load, condition, events, replicas, sidecar_socket, status
from e2e.test_operator import agent_config, get_json
from e2e.test_restarts import (
    DEPLOYMENT, PROFILE, RECOVERY, SCALED_PROFILE, all_configured, generation_of, getstats_ok,
    operator_log, pods, scaled_up_and_settled, sidecar_pid,
)

pytestmark = pytest.mark.usefixtures("operator")


def report(line: str) -> None:
    """A measured recovery, for the closing note (shown with -s, and in the log on failure)."""
    print(f"\n[fault] {line}", flush=True)


def log_tail(cluster: LocalCluster, lines: int = 30) -> str:
    return "operator log tail:\n" + "\n".join(operator_log(cluster).splitlines()[-lines:])


def patch_spec(cluster: LocalCluster, ns: str, max_queue: int) -> None:
    cluster.kubectl("patch", "perfprofile", "watched", "-n", ns, "--type=merge",
                    "-p", f'{{"spec": {{"pools": {{"maxQueue": {max_queue}}}}}}}')


def at_generation(cluster: LocalCluster, ns: str, ips: list[str], generation: int) -> int:
    return sum(generation_of(cluster, ns, ip) == generation for ip in ips)


def test_operator_killed_mid_rollout_finishes_it_after_a_restart(
        cluster: LocalCluster, namespace: str, wait_for: Any,
        restart_operator: Callable[..., subprocess.Popen[bytes]]) -> None:
    n = 6
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=DEPLOYMENT.replace("replicas: 2", f"replicas: {n}"))
    wait_for(lambda: all_configured(cluster, namespace, 1, n),
             f"{n}/{n} sidecars configured at generation 1", timeout=120)
    live = pods(cluster, namespace)
    ips = [p["status"]["podIP"] for p in live]
    # Half the sidecars frozen: Configure to them hangs (deadline, retries) while the others
    # take the new generation, so the operator dies with its rollout half done.
    frozen = [wait_for(lambda p=p: sidecar_pid(cluster, namespace, p["metadata"]["name"]),
                       "a sidecar's pid") for p in live[: n // 2]]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        patch_spec(cluster, namespace, 88)           # generation 2
        wait_for(lambda: at_generation(cluster, namespace, ips[n // 2:], 2) == n - n // 2,
                 "the rollout to reach the sidecars that answer", timeout=RECOVERY)
        at_kill = at_generation(cluster, namespace, ips[n // 2:], 2)
        assert all_configured(cluster, namespace, 2, n) is None, "the rollout is not complete"
        killed = time.monotonic()
        restart_operator(while_down=lambda: [os.kill(pid, signal.SIGCONT) for pid in frozen])
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    started = time.monotonic()
    wait_for(lambda: at_generation(cluster, namespace, ips, 2) == n,
             f"all {n} sidecars at generation 2 after the restart", timeout=RECOVERY)
    st = wait_for(lambda: all_configured(cluster, namespace, 2, n)
                  and condition(s := status(cluster, namespace), "Ready").get("status") == "True"
                  and s, "status: every sidecar at generation 2, Ready", timeout=RECOVERY)
    done = time.monotonic()
    assert st["pods"]["configured"] == n, st
    assert {agent_config(cluster, namespace, ip).config.pools.max_queue for ip in ips} == {88}
    report(f"operator killed mid-rollout ({at_kill}/{n} sidecars at the new generation when "
           f"it died): all {n} at the new generation and Ready {done - started:.1f}s after the "
           f"restart ({done - killed:.1f}s after the kill, bound {RECOVERY:.0f}s)")


LATE_POD = """
apiVersion: v1
kind: Pod
metadata: {name: late, labels: {app: watched, perfpilot.io/inject: "true"}}
spec:
  nodeName: kwok-node-0
  containers: [{name: app, image: example.invalid/app:1}]
"""


def test_apiserver_restart_watches_recover_without_duplicate_scale_steps(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    settled = scaled_up_and_settled(cluster, namespace, wait_for)
    size = replicas(cluster, namespace)
    wait_for(lambda: all_configured(cluster, namespace, 1, size),
             f"{size}/{size} sidecars configured", timeout=RECOVERY)
    steps = events(cluster, namespace, "Scaled")
    last = settled["replicas"]["lastScaleTime"]
    calls = getstats_ok(namespace)

    ready_in = cluster.restart_apiserver(down_for=5.0)
    back = time.monotonic()
    try:
        # The operator's watches recover: a spec change made now (admitted by its webhook) and a
        # pod created now (its pods index) both reach the sidecars.
        patch_spec(cluster, namespace, 66)
        ips = [p["status"]["podIP"] for p in pods(cluster, namespace)]
        wait_for(lambda: at_generation(cluster, namespace, ips, 2) == size,
                 "the spec change on every sidecar", timeout=RECOVERY)
        spec_seen = time.monotonic() - back
        # A pod created now (bound to a kwok node, so no scheduler or controller-manager is
        # involved, whose own watches recover at their pace) is injected and configured: the
        # operator's pods index is live again.
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=LATE_POD)
        st = wait_for(lambda: all_configured(cluster, namespace, 2, size + 1)
                      and condition(s := status(cluster, namespace), "Ready")
                      .get("status") == "True" and s,
                      "generation 2 on every sidecar, the new pod's too", timeout=RECOVERY)
        recovered = time.monotonic() - back
        assert st["pods"]["configured"] == size + 1, st
        # Stats passes run again, and none of them scales.
        wait_for(lambda: getstats_ok(namespace) >= calls + 3 * size,
                 "stats passes after the restart", timeout=RECOVERY)
        assert replicas(cluster, namespace) == size, log_tail(cluster)
        assert events(cluster, namespace, "Scaled") == steps, log_tail(cluster)
        assert status(cluster, namespace)["replicas"].get("lastScaleTime") == last
        assert dev.running(cluster, "operator")
    finally:
        # The next modules need a working controller-manager (namespaces' ServiceAccounts).
        cluster.wait_controllers()
        controllers = time.monotonic() - back
    report(f"kube-apiserver down 5s, /readyz {ready_in:.1f}s after its start: a spec change "
           f"made then reached every sidecar {spec_seen:.1f}s after it answered; with a "
           f"new pod configured too, status Ready {recovered:.1f}s after (bound "
           f"{RECOVERY:.0f}s); replicas {size} kept, no new scale step (kube-controller-manager "
           f"acted again {controllers:.0f}s after the restart, on its own)")


OUTAGE_PROFILE = SCALED_PROFILE.replace("minReplicas: 1", "minReplicas: 2")


def test_stats_outage_holds_the_scaler_and_it_resumes_after(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=OUTAGE_PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    wait_for(lambda: all_configured(cluster, namespace, 1, 2), "2/2 sidecars configured",
             timeout=90)
    loaded, silent = (p["metadata"]["name"] for p in pods(cluster, namespace))
    socket = wait_for(lambda: sidecar_socket(cluster, namespace, loaded), "the sidecar's socket")
    pid = wait_for(lambda: sidecar_pid(cluster, namespace, silent), "the silent sidecar's pid")
    os.kill(pid, signal.SIGSTOP)     # frozen, not dead: the pod stays Running, GetStats times out
    try:
        # Slow ops on the pod that answers: alone, its p99 asks for more replicas.
        with app_load(socket, [0.2]):
            st = wait_for(lambda: condition(s := status(cluster, namespace), "ScalingActive")
                          .get("reason") == "MetricsIncomplete" and s,
                          "the scaler to hold on incomplete stats", timeout=60)
            held = time.monotonic()
            assert condition(st, "ScalingActive")["status"] == "False"
            assert "1 sidecar(s) did not answer GetStats" in \
                condition(st, "ScalingActive")["message"], st
            degraded = condition(st, "Degraded")
            assert degraded["status"] == "True" and silent in degraded["message"], degraded
            while time.monotonic() < held + 6:    # several decisions (interval 1s): no step
                assert replicas(cluster, namespace) == 2, log_tail(cluster)
                time.sleep(0.5)
            assert events(cluster, namespace, "Scaled") == []
            os.kill(pid, signal.SIGCONT)
            back = time.monotonic()
            wait_for(lambda: replicas(cluster, namespace) > 2,
                     "a scale-up once every sidecar reports again", timeout=RECOVERY)
            resumed = time.monotonic() - back
    finally:
        os.kill(pid, signal.SIGCONT)
    st = wait_for(lambda: condition(s := status(cluster, namespace), "Degraded")
                  .get("status") == "False" and s, "Degraded to clear", timeout=RECOVERY)
    report(f"stats outage of 1 of 2 sidecars: scaler held (MetricsIncomplete) for "
           f"{back - held:.1f}s of load with no step; first step {resumed:.1f}s after the "
           f"sidecar answered again (bound {RECOVERY:.0f}s)")


BARE_POD = LATE_POD.replace("name: late", "name: bare")


def test_watchdog_restarts_a_deployment_whose_pods_lack_the_sidecar(
        cluster: LocalCluster, namespace: str, wait_for: Any,
        restart_operator: Callable[..., subprocess.Popen[bytes]]) -> None:
    """Off by default (the other tests run without it); on, it re-creates the pods of a
    Deployment started before its profile, once, and leaves a bare pod alone."""
    restart_operator(env={"PERFPILOT_RECREATE_UNINJECTED": "true"})
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=BARE_POD)
        wait_for(lambda: len(pods(cluster, namespace)) == 3, "3 pods running without a profile")
        bare_uid = get_json(cluster, "pod", "bare", "-n", namespace)["metadata"]["uid"]
        applied = time.monotonic()
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
        restarted = wait_for(lambda: events(cluster, namespace, "RestartedUninjected"),
                             "the watchdog's RestartedUninjected Event", timeout=RECOVERY)
        assert "restarted Deployment watched" in restarted[0], restarted
        template = get_json(cluster, "deployment", "watched", "-n", namespace)["spec"]["template"]
        assert "kubectl.kubernetes.io/restartedAt" in template["metadata"].get("annotations", {})
        st = wait_for(lambda: (s := status(cluster, namespace)).get("pods", {}).get("configured")
                      == 2 and s["pods"].get("uninjected") == 1 and s,
                      "the Deployment's new pods injected and configured", timeout=90)
        done = time.monotonic() - applied
        # The bare pod: never deleted by the operator; the advice says what to do with it.
        assert get_json(cluster, "pod", "bare", "-n", namespace)["metadata"]["uid"] == bare_uid
        assert "delete and re-create pod bare" in condition(st, "InjectionComplete")["message"]
        assert len(events(cluster, namespace, "RestartedUninjected")) == 1
    finally:
        restart_operator()       # the suite's operator again: watchdog off
    report(f"watchdog (PERFPILOT_RECREATE_UNINJECTED=true): a Deployment started before its "
           f"profile restarted once, its pods injected and configured {done:.1f}s after the "
           f"profile was applied; a bare pod left alone")
