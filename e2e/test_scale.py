"""The scale scenario, small (200 injected pods beside 1,000 unrelated ones), kept working in
`make test`; `make bench-scale` runs it at 1,000 + 10,000 and times it (e2e/harness/scale.py).

Nothing here is timed: it checks that every injected pod of 20 profiles gets a real agent on its
pod IP (the agent fleet, plus full sidecar processes for one Deployment), that the operator reads
their generations back and rolls a change out to all of them, that unrelated pods stay out of
its counts, and that the coverage audit (a server-side filtered LIST) still finds a selected pod
that never opted in, although the operator's pod watch no longer sees such pods.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness.cluster import LocalCluster
from e2e.harness.scale import Scale, ScaleSpec

pytestmark = pytest.mark.local_harness

SPEC = ScaleSpec(namespaces=4, profiles_per_namespace=5, replicas=10, other_pods=1000,
                 other_namespaces=2, sample_deployments=1, prefix="e2e-scale", resync="1s")


@pytest.fixture()
def scale(cluster: LocalCluster, operator: subprocess.Popen[bytes]) -> Iterator[Scale]:
    sc = Scale(cluster, SPEC, lambda m: print(f"[e2e scale] {m}", flush=True))
    sc.close()                  # leftovers of an interrupted run
    sc.prepare()
    sc.start_agents(podrunner=False)        # the suite's pod runner runs the sample's sidecars
    try:
        yield sc
    finally:
        sc.close()


# Its own waits are deadline-bounded and say what is missing: pytest's timeout (300 s) is only
# the backstop, above their sum (~11 min on a slow machine; ~45 s here).
@pytest.mark.timeout(900)
def test_scale_scenario_200_injected_pods_beside_1000_others(scale: Scale, wait_for: Any
                                                             ) -> None:
    s = scale.spec
    scale.create_other_pods()
    scale.create_profiles(replicas=s.replicas)
    scale.wait_configured(s.replicas, timeout=360,
                          what=f"{s.profiles} profiles x {s.replicas} pods injected and configured")
    others = [s.other_namespace(i) for i in range(s.other_namespaces)]
    assert scale.count_running("app=other", others) == s.other_pods
    hosted = {key for _, what, key, _ in scale.fleet_records() if what == "configure"}
    assert len(hosted) == s.injected - s.sample_deployments * s.replicas, \
        "every fleet-hosted pod's agent was configured over its own pod IP"

    # A change to every profile reaches every sidecar (read back from them: the status).
    scale.patch_profiles(s.targets(), 2000)
    scale.wait_configured(s.replicas, generation=2, timeout=240,
                          what="generation 2 configured on every sidecar")

    # A selected pod without the opt-in label is outside the operator's pod watch: the coverage
    # audit's LIST finds it, and the profile says so.
    ns, name = s.targets()[-1]
    scale.cluster.kubectl("run", "stray", "-n", ns, "--image=example.invalid/app:1",
                          f"--labels=app={name}")

    def audited() -> dict[str, Any] | None:
        st = scale.statuses()[(ns, name)].get("status") or {}
        return st if (st.get("pods") or {}).get("uninjected") == 1 else None

    st = wait_for(audited, "the stray pod reported uninjected", timeout=90, interval=1.0)
    assert st["pods"]["injected"] == s.replicas
    cond = next(c for c in st["conditions"] if c["type"] == "InjectionComplete")
    assert cond["reason"] == "PodsWithoutSidecar" and "stray" in cond["message"]
