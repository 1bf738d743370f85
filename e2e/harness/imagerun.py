"""Run a built image's entrypoint without a container runtime: unpack, chroot, read-only.

`unpacked(image)` extracts the OCI tarball's layers into a temporary rootfs; `sidecar(image)`
starts the sidecar image's entrypoint there the way a restricted pod runs it (uid 65532, the
image's environment, the root filesystem mounted read-only, a tmpfs for the socket volume, the
host's /dev/shm) and yields its Unix socket. `ready_seconds` is start -> gRPC health SERVING.

    python -m e2e.harness.imagerun [--runs 3]     # sidecar ready time and CPU, baked cache vs none (1 run)

Needs root (chroot, mounts). The tests (tests/harness/test_sidecar_image.py) and the benchmarks
use it; nothing here is a substitute for the real node, where the kubelet runs the image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Required, TypedDict, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.harness import imagespec as spec
from e2e.harness.images import ImageRef, build
from e2e.harness.rootfs import IMAGES, BuildError, chroot_cmd, mounted, remove_tree

SOCKET_DIR = "/var/run/perfpilot"
WARM = ("cosine_topk", "normalize_score", "weighted_mean")


def inside(root: Path, path: str) -> Path:
    """`path` of the image resolved within `root` (absolute symlinks such as Debian's
    /var/run -> /run point into the image, never at the host)."""
    cur = root
    for part in Path(path).relative_to("/").parts:
        cur = cur / part
        while cur.is_symlink():
            target = os.readlink(cur)
            cur = (root / target.lstrip("/")) if target.startswith("/") else (cur.parent / target)
    return cur


@dataclass
class Running:
    """A sidecar started from an image: its process, socket (host path) and log."""

    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    rootfs: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class ImageConfig(TypedDict, total=False):
    """The fields of an OCI image config's `config` object that running the entrypoint reads."""
    Env: Required[list[str]]
    Entrypoint: Required[list[str]]
    Cmd: list[str] | None
    WorkingDir: str
    User: Required[str]


def _image_config(tar: Path) -> tuple[list[str], ImageConfig]:
    """The layer blob names (bottom first) and the `config` object of an OCI tarball."""
    with tarfile.open(tar) as t:
        def blob(digest: str) -> dict[str, Any]:
            f = t.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert f is not None
            return dict(json.load(f))
        f = t.extractfile("index.json")
        assert f is not None
        manifest = blob(json.load(f)["manifests"][0]["digest"])
        config = blob(manifest["config"]["digest"])
        layers: list[str] = [layer["digest"] for layer in manifest["layers"]]
        return layers, cast(ImageConfig, dict(config["config"]))


@contextlib.contextmanager
def unpacked(image: ImageRef) -> Iterator[tuple[Path, ImageConfig]]:
    """The image's rootfs (layers extracted in order) in a temporary directory, and its config."""
    layers, config = _image_config(image.tar)
    work = Path(tempfile.mkdtemp(prefix=f".run-{image.name}-", dir=IMAGES))
    try:
        root = work / "rootfs"
        root.mkdir()
        with tarfile.open(image.tar) as t:
            for digest in layers:
                f = t.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
                assert f is not None
                with tarfile.open(fileobj=f, mode="r|gz") as layer:
                    layer.extractall(root, filter="fully_trusted")  # our own image, as root: keep owners
        yield root, config
    finally:
        remove_tree(work)


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """`root` bind-mounted onto itself read-only (a pod's readOnlyRootFilesystem)."""
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)


@contextlib.contextmanager
def sidecar(image: ImageRef, *, baked: bool = True, warm: tuple[str, ...] = WARM) -> Iterator[Running]:
    """The sidecar image's entrypoint in a read-only chroot as uid 65532, its socket on a tmpfs.

    baked=False points NUMBA_CACHE_DIR at an empty writable tmpfs: what a pod without the baked
    cache does (compile every warm kernel at start)."""
    with unpacked(image) as (root, config):
        sock_dir = inside(root, SOCKET_DIR)
        sock_dir.mkdir(parents=True, exist_ok=True)
        scratch = root / "tmp" / "numba-empty"
        scratch.mkdir(parents=True, exist_ok=True)
        env = dict(str(e).split("=", 1) for e in config["Env"])
        env.update(PERFPILOT_SOCKET=f"{SOCKET_DIR}/agent.sock", PERFPILOT_PORT="-1", PERFPILOT_METRICS_PORT="-1",
                   PERFPILOT_CONFIG=json.dumps({"kernels": {"warm": list(warm)}}))
        if not baked:
            env["NUMBA_CACHE_DIR"] = "/tmp/numba-empty"
        log = root.parent / "sidecar.log"
        with read_only(root), mounted(root):
            mounts = [sock_dir] + ([] if baked else [scratch])
            for m in mounts:
                subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(m)], check=True)
            try:
                argv = [*config["Entrypoint"], *(config.get("Cmd") or [])]
                cmd = chroot_cmd(root, ["/bin/sh", "-c", f'cd {config.get("WorkingDir") or "/"} && exec "$@"', "sh", *argv],
                                 user=int(str(config["User"])), env=env)
                with log.open("wb") as out:
                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    yield Running(proc, sock_dir / "agent.sock", log, root)
                finally:
                    if proc.poll() is None:
                        proc.terminate()
                        try:
                            proc.wait(15)
                        except subprocess.TimeoutExpired:
                            os.killpg(proc.pid, 9)
                            proc.wait(5)
            finally:
                for m in reversed(mounts):
                    subprocess.run(["umount", "-l", str(m)], check=False, capture_output=True)


def wait_serving(run: Running, timeout: float = 180.0) -> float:
    """Seconds until gRPC health on the Unix socket says SERVING (raises on exit or timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if run.proc.poll() is not None:
            raise BuildError(f"sidecar exited with {run.proc.returncode}:\n{run.log_text()[-2000:]}")
        if run.socket.exists():
            with grpc.insecure_channel(f"unix:{run.socket}") as ch:
                with contextlib.suppress(grpc.RpcError):
                    # types-grpcio-health-checking's HealthStub declares none of its methods.
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)  # type: ignore[attr-defined]
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - t0
        time.sleep(0.05)
    raise BuildError(f"sidecar not SERVING after {timeout:.0f}s:\n{run.log_text()[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and its live descendants: what a CPU limit throttles."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


def cache_listing(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of the baked numba cache: compared before and after a run."""
    base = root / spec.NUMBA_CACHE.lstrip("/")
    return {str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(base.rglob("*"))}


def ready_seconds(image: ImageRef, *, baked: bool, runs: int = 1) -> list[tuple[float, float]]:
    """(start -> SERVING seconds, CPU seconds spent by then), `runs` times, with or without the
    baked kernel cache."""
    out = []
    for _ in range(runs):
        with sidecar(image, baked=baked) as run:
            wall = wait_serving(run)
            out.append((round(wall, 2), round(cpu_seconds(run.proc.pid), 2)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.imagerun", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    image = build("sidecar")
    result = {}
    for baked in (True, False):
        runs = ready_seconds(image, baked=baked, runs=args.runs if baked else 1)
        times = [w for w, _ in runs]
        result["baked" if baked else "no_cache"] = {"median_s": statistics.median(times), "runs": times,
                                                    "cpu_s": [c for _, c in runs]}
        print(f"sidecar ready, {'baked cache' if baked else 'no cache   '}: {times} s "
              f"(CPU {[c for _, c in runs]} s)", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
