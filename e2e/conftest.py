"""Session fixtures for the end-to-end suite: a real local control plane.

The cluster is started once per session (or reused when `make cluster-up` already runs one,
in which case it is left running afterwards). Each test gets its own namespace.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from e2e.harness.cluster import LocalCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster()
    started_here = not c.is_up()
    if started_here:
        took = c.up()
        print(f"\n[e2e] local control plane started in {took:.1f}s")
    c.apply_crds()
    os.environ["KUBECONFIG"] = str(c.kubeconfig)
    yield c
    if started_here and not os.environ.get("PERFPILOT_KEEP_CLUSTER"):
        c.down()


@pytest.fixture()
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin needs the namespace's default SA before pods.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {name}: default ServiceAccount never appeared")
        time.sleep(0.1)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
