"""The images' base stage: a pinned Debian rootfs with python3, built by debootstrap.

`ensure_base()` returns a directory holding `debootstrap --variant=minbase <suite>` + python3
(the pinned Debian package) + imagespec.BASE_DEBS (the system CA store), with apt's caches, docs, man pages and locales removed, the standard
library's bytecode made mtime-independent, and the unprivileged user the images run as. It is
cached under ~/.cache/perfpilot/images/base-<hash>/ and rebuilt only when this recipe changes.

The apt source is the one this machine's apt is configured with (read from /etc/apt), so the
repository names no mirror. `chroot_run` runs a command inside a rootfs with /proc, /dev and
/dev/shm mounted (the kernel bake and the image tests use it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from e2e.harness import imagespec as spec

CACHE = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot"))
IMAGES = CACHE / "images"
APT = Path("/etc/apt")
# Removed from the base: nothing at run time reads them.
_STRIP = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
          "usr/share/info", "usr/share/locale", "usr/share/lintian", "var/log")


class BuildError(RuntimeError):
    """A build step failed; the message names the step and what to do."""


def log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def debian_mirror(apt_dir: Path = APT) -> str:
    """The URI this machine's apt uses for the pinned suite (deb822 .sources or sources.list)."""
    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) if (apt_dir / "sources.list.d").is_dir() else []
    for path in files:
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split() and spec.DEBIAN_SUITE in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split() and fields.get("enabled", "yes") != "no"):
                return fields["uris"].split()[0]
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] == spec.DEBIAN_SUITE and "main" in words[3:]:
                return words[1]
    raise BuildError(f"no apt source for Debian {spec.DEBIAN_SUITE} main in {apt_dir}/sources.list(.d): "
                     f"add one (debootstrap uses the machine's own apt source)")


def base_key() -> str:
    """Hash of everything the base depends on: its recipe (ensure_base, what it strips) and the
    pins it reads; other edits of this module (helpers) do not rebuild the base."""
    h = hashlib.sha256(inspect.getsource(ensure_base).encode())
    for part in (repr(_STRIP), repr(spec.BASE_DEBS), spec.DEBIAN_SUITE, spec.PYTHON, spec.PYTHON_DEB, str(spec.UID), spec.USER, spec.HOME, spec.PYC):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    """One builder at a time per stage (helpers and test sessions share the cache)."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, logfile: Path) -> None:
    with logfile.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(logfile.read_text().splitlines()[-15:])
        raise BuildError(f"{what} failed ({proc.returncode}); log {logfile}:\n{tail}")


@contextlib.contextmanager
def mounted(rootfs: Path) -> Iterator[None]:
    """/proc, /dev (with /dev/shm) and /sys (read-only) of the host inside `rootfs`, for chroot."""
    done: list[Path] = []
    try:
        for src, rel, opts in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--rbind"]),
                               ("/sys", "sys", ["--rbind", "-o", "ro"])):
            target = rootfs / rel
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *opts, src, str(target)], check=True, capture_output=True)
            subprocess.run(["mount", "--make-rslave", str(target)], check=False, capture_output=True)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False, capture_output=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything mounted below `path` (a crashed chroot step leaves
    /dev bound inside a rootfs; deleting through it would delete the host's device nodes)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-R", "-l", point], check=False, capture_output=True)
    with open("/proc/self/mountinfo") as fh:
        left = [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]
    if left:
        raise BuildError(f"cannot remove {path}: still mounted: {left}")
    shutil.rmtree(path, ignore_errors=True)


def chroot_cmd(rootfs: Path, argv: Sequence[str], *, user: int | None = None,
               env: dict[str, str] | None = None) -> list[str]:
    """`chroot [--userspec] rootfs env -i K=V ... argv`: a clean environment, like a container."""
    userspec = [f"--userspec={user}:{user}"] if user is not None else []
    pairs = [f"{k}={v}" for k, v in {"PATH": spec.PATH, **(env or {})}.items()]
    return ["chroot", *userspec, str(rootfs), "/usr/bin/env", "-i", *pairs, *argv]


def ensure_base() -> Path:
    """The cached base rootfs (built on first use, ~1 min); returns its directory."""
    key = base_key()
    final = IMAGES / f"base-{spec.DEBIAN_SUITE}-{key}"
    if (final / ".done").exists():
        return final / "rootfs"
    with build_lock("base"):
        if (final / ".done").exists():
            return final / "rootfs"
        if os.geteuid() != 0:
            raise BuildError("building the base rootfs needs root (debootstrap, chroot)")
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is missing: run `make debs`")
        mirror = debian_mirror()
        for stale in IMAGES.glob(".base-*.tmp"):   # a build that failed or was killed
            remove_tree(stale)
        work = IMAGES / f".base-{key}.tmp"
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        logfile = work / "build.log"
        t0 = time.monotonic()
        include = ",".join(("python3", *spec.BASE_DEBS))
        log(f"base: debootstrap --variant=minbase {spec.DEBIAN_SUITE} + {include} (~2 min; log {logfile})")
        _run(["debootstrap", "--variant=minbase", f"--include={include}", spec.DEBIAN_SUITE, str(rootfs), mirror],
             "debootstrap", logfile)
        t1 = time.monotonic()
        got = subprocess.run(chroot_cmd(rootfs, ["dpkg-query", "-W", "-f=${Version}", "python3"]),
                             capture_output=True, text=True).stdout.strip()
        if got != spec.PYTHON_DEB:
            raise BuildError(f"the {spec.DEBIAN_SUITE} mirror {mirror} installed python3 {got!r}, the recipe pins "
                             f"{spec.PYTHON_DEB!r}: update PYTHON_DEB in e2e/harness/imagespec.py and the Dockerfiles")
        _run(chroot_cmd(rootfs, ["useradd", "--uid", str(spec.UID), "--user-group", "--create-home",
                                 "--home-dir", spec.HOME, "--shell", "/usr/sbin/nologin", spec.USER]),
             "useradd", logfile)
        _run(chroot_cmd(rootfs, [*spec.PYC.split(), f"/usr/lib/python{spec.PYTHON}", "/usr/lib/python3/dist-packages"]),
             "compileall (standard library)", logfile)
        for rel in _STRIP:
            path = rootfs / rel
            if path.is_dir():
                for child in path.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for rel in ("etc/machine-id", "etc/hostname", "etc/resolv.conf"):
            (rootfs / rel).unlink(missing_ok=True)
        (work / ".done").write_text(f"debootstrap {t1 - t0:.1f}s total {time.monotonic() - t0:.1f}s\n")
        remove_tree(final)
        work.rename(final)
        log(f"base: ready in {time.monotonic() - t0:.0f}s ({du_mb(final / 'rootfs'):.0f} MB) -> {final}")
        return final / "rootfs"


def du_mb(path: Path) -> float:
    """Apparent size of a tree in MB (files counted once)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total / 1e6


if __name__ == "__main__":
    print(ensure_base())
