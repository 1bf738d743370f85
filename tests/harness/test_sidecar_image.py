"""The built sidecar image runs: its entrypoint, as uid 65532 on a read-only root filesystem
(chroot of the unpacked image; no cluster), reports SERVING over its Unix socket with warm
kernels loaded from the baked numba cache, writes nothing there, and runs a kernel whose inputs
travel through shared memory; and it carries the system CA store a rediss:// shared tier is
verified against."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from e2e.harness import images
from e2e.harness.imagerun import cache_listing, sidecar, unpacked, wait_serving
from e2e.harness.rootfs import chroot_cmd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running an image by chroot needs root")


@pytest.fixture(scope="module")
def image() -> images.ImageRef:
    ref = images.built("sidecar")
    if ref is None:
        pytest.skip("the sidecar image for the current sources is not built: run `make images`")
    return ref


def test_sidecar_image_serves_with_baked_kernels_read_only(image: images.ImageRef) -> None:
    from perfpilot_client import AgentClient

    with sidecar(image) as run:
        before = cache_listing(run.rootfs)
        assert before, "the image carries no baked numba cache"
        wait_serving(run)
        status = open(f"/proc/{run.proc.pid}/status").read()
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {"65532"}
        with AgentClient(f"unix:{run.socket}", timeout=60) as agent:
            m = np.random.default_rng(1).standard_normal((4096, 64), dtype=np.float32)   # 1 MB: shared memory
            assert agent.shm_threshold is not None and m.nbytes >= agent.shm_threshold
            out = agent.run_kernel("cosine_topk", query=m[:3], matrix=m, k=2)
            assert out["indices"][:, 0].tolist() == [0, 1, 2]
        log = run.log_text()
        assert "ready (warm kernels: cosine_topk, normalize_score, weighted_mean)" in log
        assert "compiled in memory" not in log, log
        assert cache_listing(run.rootfs) == before


def test_sidecar_image_has_the_system_cas_rediss_verifies_against(image: images.ImageRef) -> None:
    """docs/sidecar.md: rediss:// verifies the server with the system CAs. Debian's minbase (and
    -slim) have none: every TLS Redis, a managed one with a public CA included, was refused."""
    code = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"
    with unpacked(image) as (root, config):
        env = dict(str(e).split("=", 1) for e in config["Env"])  # type: ignore[attr-defined]
        out = subprocess.run(chroot_cmd(root, ["python3", "-c", code], user=int(str(config["User"])), env=env),
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 100, f"the image's default SSL context trusts {out.stdout.strip()} CAs"
