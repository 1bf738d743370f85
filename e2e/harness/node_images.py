"""The two tiny images the real node needs, built here and cached by content.

- `localhost/perfpilot/pause:<TAG>`: Kubernetes' own build/pause/linux/pause.c from the pinned
  k8s.io/kubernetes module (Go module cache), compiled with `gcc -static` as its Makefile does;
  containerd's sandbox image.
- `localhost/perfpilot/busybox:<version>`: Debian's busybox-static /bin/busybox with its applet
  links; the e2e tests' plain workload (sh, httpd, nc, sleep). Its `wget` segfaults (Debian's
  busybox-static 1.35 does so on the host too): speak HTTP with `nc` instead.

Each tarball lives in ~/.cache/perfpilot/images/ under a name carrying a hash of its inputs
(sources, compiler, the writer), so a changed input builds a new one and an unchanged one is
reused.  `python -m e2e.harness.node_images` builds both and prints their paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e.harness import oci

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot"))
IMAGES = CACHE / "images"
K8S_GOMOD = ROOT / "e2e" / "gobuild" / "k8sbin" / "go.mod"
BUSYBOX = Path("/bin/busybox")


def _log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _key(*parts: bytes) -> str:
    """Short content hash of a build's inputs; the writer's own source is always one of them."""
    h = hashlib.sha256(Path(oci.__file__).read_bytes())
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def k8s_version() -> str:
    """The pinned k8s.io/kubernetes version (one source: the Go build's go.mod)."""
    m = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", K8S_GOMOD.read_text(), re.MULTILINE)
    if not m:
        raise oci.ImageError(f"k8s.io/kubernetes is not required in {K8S_GOMOD}")
    return m.group(1)


def pause_dir() -> Path:
    """build/pause of the pinned module, downloaded into the Go module cache if needed."""
    version = k8s_version()
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    try:
        modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                                  check=True, env=env).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise oci.ImageError(f"`go env GOMODCACHE` failed ({exc}): is Go installed?") from exc
    path = Path(modcache) / f"k8s.io/kubernetes@{version}" / "build" / "pause"
    if not (path / "linux" / "pause.c").exists():
        _log(f"downloading k8s.io/kubernetes@{version} into the Go module cache ...")
        subprocess.run(["go", "mod", "download", f"k8s.io/kubernetes@{version}"],
                       cwd=K8S_GOMOD.parent, env=env, check=True)
    if not (path / "linux" / "pause.c").exists():
        raise oci.ImageError(f"{path}/linux/pause.c missing after `go mod download`")
    return path


def pause_tag(build_pause: Path) -> str:
    m = re.search(r"^TAG \?= (\S+)", (build_pause / "Makefile").read_text(), re.MULTILINE)
    if not m:
        raise oci.ImageError(f"no `TAG ?=` line in {build_pause / 'Makefile'}")
    return m.group(1)


def _gcc_version() -> bytes:
    if shutil.which("gcc") is None:
        raise oci.ImageError("gcc is missing: run `make debs`")
    return subprocess.run(["gcc", "--version"], capture_output=True, check=True).stdout


def pause_ref() -> str:
    return f"localhost/perfpilot/pause:{pause_tag(pause_dir())}"


def ensure_pause_image() -> tuple[str, Path]:
    """(reference, OCI tarball) of the pause image, compiled once per input change."""
    src = pause_dir()
    tag = pause_tag(src)
    ref = f"localhost/perfpilot/pause:{tag}"
    source = (src / "linux" / "pause.c").read_bytes()
    out = IMAGES / f"pause-{tag}-{_key(source, _gcc_version())}.tar"
    if out.exists():
        return ref, out
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        # The flags of build/pause/Makefile (CFLAGS), version string naming this build.
        subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static",
                        f"-DVERSION=v{tag}-perfpilot", "-o", str(rootfs / "pause"),
                        str(src / "linux" / "pause.c")], check=True)
        subprocess.run(["strip", str(rootfs / "pause")], check=False)
        oci.write_image(ref, [rootfs], {"Entrypoint": ["/pause"], "User": "65535:65535"}, out)
    _log(f"built {ref} in {time.monotonic() - t0:.1f}s -> {out}")
    return ref, out


def busybox_version() -> str:
    if not BUSYBOX.exists():
        raise oci.ImageError(f"{BUSYBOX} is missing: run `make debs` (busybox-static)")
    head = subprocess.run([str(BUSYBOX)], capture_output=True, text=True, check=False).stdout
    m = re.search(r"BusyBox v(\S+)", head)
    if not m:
        raise oci.ImageError(f"cannot read the version of {BUSYBOX}: {head[:80]!r}")
    return m.group(1)


def busybox_ref() -> str:
    return f"localhost/perfpilot/busybox:{busybox_version()}"


BUSYBOX_CONFIG = {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}


def _busybox_rootfs(rootfs: Path) -> None:
    """/bin/busybox with a link per applet, /etc/passwd and /etc/group, an empty /tmp."""
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


def ensure_busybox_image() -> tuple[str, Path]:
    """(reference, OCI tarball) of a busybox-static image: /bin/busybox and its applets."""
    ref = busybox_ref()
    out = IMAGES / f"busybox-{busybox_version()}-{_key(BUSYBOX.read_bytes())}.tar"
    if out.exists():
        return ref, out
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="busybox-") as tmp:
        _busybox_rootfs(Path(tmp) / "rootfs")
        oci.write_image(ref, [Path(tmp) / "rootfs"], BUSYBOX_CONFIG, out)
    _log(f"built {ref} in {time.monotonic() - t0:.1f}s -> {out}")
    return ref, out


def ensure_kubectl_image(kubectl: Path) -> tuple[str, Path]:
    """(reference, OCI tarball) of busybox + the built kubectl (static Go) as a second layer:
    a pod that talks to the API server with its ServiceAccount, as in-cluster clients do."""
    version = k8s_version()
    ref = f"localhost/perfpilot/kubectl:{version}"
    out = IMAGES / f"kubectl-{version}-{_key(BUSYBOX.read_bytes(), kubectl.read_bytes())}.tar"
    if out.exists():
        return ref, out
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubectl-") as tmp:
        base, top = Path(tmp) / "base", Path(tmp) / "top"
        _busybox_rootfs(base)
        (top / "bin").mkdir(parents=True)
        shutil.copy2(kubectl, top / "bin" / "kubectl")
        oci.write_image(ref, [base, top], BUSYBOX_CONFIG, out)
    _log(f"built {ref} in {time.monotonic() - t0:.1f}s -> {out}")
    return ref, out


def main() -> int:
    for build in (ensure_pause_image, ensure_busybox_image):
        ref, path = build()
        print(f"{ref}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
