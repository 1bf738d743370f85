"""The e2e suite against any cluster (`make e2e-cluster`): the one in $KUBECONFIG, e.g. kind,
with the project's images already loaded into its nodes.

Nothing is started or stopped: no local control plane, no kwok, no pod runner, no operator as
a host process. Scenarios that need those (marked `local_harness`, or using the `podrunner` /
`operator` fixtures) are skipped with the reason below; the CRD, Helm and real-node scenarios
run, the operator and the sidecars in containers as on any cluster.

    PERFPILOT_E2E_EXTERNAL=1 KUBECONFIG=~/.kube/config python -m pytest e2e
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

from e2e.harness.cluster import STATE, ClusterError, LocalCluster

EXTERNAL_ENV = "PERFPILOT_E2E_EXTERNAL"
LOCAL_ONLY = ("needs the local harness (kwok nodes, the pod runner's host sidecars, the operator "
              "as a host process or the local control plane's processes): `make e2e` runs it")


def external() -> bool:
    """True in `make e2e-cluster` mode."""
    return os.environ.get(EXTERNAL_ENV, "") not in ("", "0", "false")


class ExternalCluster(LocalCluster):
    """A cluster the suite did not start: same interface as LocalCluster, no lifecycle."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(state=STATE / "external")   # logs of processes the tests start
        self.kubeconfig = kubeconfig
        self.state.mkdir(parents=True, exist_ok=True)

    def export_ca(self) -> Path:
        """The API server's CA from the kubeconfig, as a file (pki.ca_crt), for clients the
        tests configure themselves (a ServiceAccount's token kubeconfig)."""
        data = self.kubectl("config", "view", "--raw", "--minify", "-o",
                            "jsonpath={.clusters[0].cluster.certificate-authority-data}"
                            ).stdout.strip()
        self.pki.dir.mkdir(parents=True, exist_ok=True)
        if data:
            self.pki.ca_crt.write_bytes(base64.b64decode(data))
        else:
            path = self.kubectl("config", "view", "--minify", "-o",
                                "jsonpath={.clusters[0].cluster.certificate-authority}"
                                ).stdout.strip()
            if not path:
                raise ClusterError(f"{self.kubeconfig}: the cluster has no certificate-authority")
            shutil.copyfile(Path(path).expanduser(), self.pki.ca_crt)
        return self.pki.ca_crt

    @classmethod
    def from_env(cls) -> ExternalCluster:
        value = os.environ.get("KUBECONFIG", "")
        path = Path(value.split(os.pathsep)[0]).expanduser() if value else \
            Path.home() / ".kube" / "config"
        if not path.is_file():
            raise ClusterError(
                f"{EXTERNAL_ENV}=1 runs the suite against the cluster in $KUBECONFIG, but "
                f"{path} does not exist: set KUBECONFIG (e.g. `kind get kubeconfig > kc`)")
        return cls(path)

    def binary(self, name: str) -> str:
        """The project's pinned build when there is one, else the tool on PATH."""
        if (self.bin / name).exists():
            return str(self.bin / name)
        found = shutil.which(name)
        if found is None:
            raise ClusterError(f"{name} is not on PATH and {self.bin / name} is missing: "
                               f"install {name} or run `make cluster-build`")
        return found

    @property
    def server(self) -> str:
        return self.kubectl("config", "view", "--minify", "-o",
                            "jsonpath={.clusters[0].cluster.server}").stdout.strip()

    def is_up(self) -> bool:
        try:
            out = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and out.stdout.strip() == "ok"

    def up(self) -> float:
        raise ClusterError("the suite never starts an external cluster: start it yourself "
                           "(`kind create cluster`) and point KUBECONFIG at it")

    def down(self, quiet: bool = False) -> None:
        """Never: the cluster belongs to whoever started it."""


def image_ref(component: str) -> tuple[str, str] | None:
    """(repository, tag) of a project image loaded into the cluster's nodes, from
    PERFPILOT_E2E_<COMPONENT>_IMAGE=repository:tag; None when unset."""
    ref = os.environ.get(f"PERFPILOT_E2E_{component.upper()}_IMAGE", "")
    if not ref:
        return None
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        raise ClusterError(f"PERFPILOT_E2E_{component.upper()}_IMAGE={ref!r}: expected "
                           f"repository:tag, e.g. localhost/perfpilot/{component}:1a2b3c")
    return repo, tag


def helm_image_args() -> list[str]:
    """`--set` flags that make the chart use the loaded images (pullPolicy Never: no registry).
    Empty on the local kwok cluster, whose nodes pull nothing."""
    args: list[str] = []
    for component, prefix in (("operator", "image"), ("sidecar", "sidecar.image")):
        ref = image_ref(component)
        if ref is not None:
            args += ["--set", f"{prefix}.repository={ref[0]}", "--set-string",
                     f"{prefix}.tag={ref[1]}", "--set", f"{prefix}.pullPolicy=Never"]
    return args
