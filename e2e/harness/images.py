"""perfpilot's images, built here without Docker or a registry: `make images`.

    python -m e2e.harness.images [--only sidecar,operator,example-app] [--json]

One recipe (`e2e/harness/imagespec.py` says what goes in; the Dockerfiles mirror it for users with
Docker) on top of the cached Debian base (`rootfs.ensure_base`):

1. the perfpilot wheel, built once per source hash;
2. per image, a second layer: the wheel with the image's extra installed by this machine's pip
   (`--target` the image's site-packages, wheels for the image's platform and Python, the pins of
   pyproject.toml), console scripts with the image's python3, the app's files, bytecode compiled
   by the image's own python3 (chroot), and for the sidecar the numba cache baked in (chroot, as
   root: `python -m perfpilot_agent.kernels.bake`);
3. an OCI image-layout tarball (`oci.write_image`) named `localhost/perfpilot/<name>:<tag>`.

The tag is a short hash of every input (the base, this recipe, pyproject.toml, the package
sources, the app's files), so a changed input gives a new tag and an unchanged one is reused from
~/.cache/perfpilot/images/. `build_all()` is what the e2e harness calls; `import_all()` loads the
tarballs into a containerd.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from e2e.harness import imagespec as spec
from e2e.harness import oci, rootfs
from e2e.harness.rootfs import IMAGES, BuildError, chroot_cmd, log

ROOT = Path(__file__).resolve().parents[2]
DIST_INPUTS = ("pyproject.toml", "README.md", "sidecar", "operator")
"""What the perfpilot wheel is built from (Dockerfiles excluded: they are not inputs here)."""
_SKIP_NAMES = {"__pycache__", "Dockerfile", "build", ".pytest_cache"}


@dataclass(frozen=True)
class ImageRef:
    """A built image: its reference, its OCI tarball, and what building it cost."""

    name: str
    ref: str
    tag: str
    tar: Path
    raw_mb: float
    """Uncompressed size of the image's files (base + own layer)."""
    gz_mb: float
    """Size of the tarball (gzipped layers)."""
    build_s: float
    """Seconds this call spent (≈0 when the tarball came from the cache)."""
    cached: bool


def _files(rel: str) -> Iterator[Path]:
    path = ROOT / rel
    if path.is_file():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_NAMES and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name not in _SKIP_NAMES and not name.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / name


def _digest(paths: Iterable[str], *extra: bytes) -> str:
    h = hashlib.sha256()
    for rel in paths:
        for path in _files(rel):
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for part in extra:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def dist_key() -> str:
    """Hash of the perfpilot distribution's sources (the wheel's cache key)."""
    return _digest(DIST_INPUTS)


def image_tag(image: spec.ImageSpec, base_key: str | None = None) -> str:
    """The image's tag: a short hash of all of its inputs."""
    # __file__ is typed optional: these four modules are loaded from files (the ignore below).
    recipe = b"".join(Path(m.__file__).read_bytes() for m in (sys.modules[__name__], spec, oci, rootfs))  # type: ignore[arg-type]
    apps = [image.app_source] if image.app_source else []
    return _digest([*DIST_INPUTS, *apps], (base_key or rootfs.base_key()).encode(), recipe,
                   json.dumps(asdict(image), sort_keys=True).encode())


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def ensure_wheel() -> Path:
    """The perfpilot wheel for the current sources (pip wheel, cached by source hash)."""
    out = IMAGES / "wheels" / dist_key()
    done = list(out.glob("perfpilot-*.whl"))
    if done:
        return done[0]
    with rootfs.build_lock("wheel"):
        done = list(out.glob("perfpilot-*.whl"))
        if done:
            return done[0]
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        proc = subprocess.run(_pip("wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"pip wheel {ROOT} failed: {proc.stderr.strip()[-2000:]}")
        tmp.rename(out)
        log(f"wheel: {next(out.glob('*.whl')).name} in {time.monotonic() - t0:.1f}s")
        return next(out.glob("perfpilot-*.whl"))


def _write_scripts(site: Path, bindir: Path) -> None:
    """pip --target writes console scripts for *this* interpreter: rewrite them for the image's."""
    bindir.mkdir(parents=True, exist_ok=True)
    src = site / "bin"
    if not src.is_dir():
        return
    for script in sorted(src.iterdir()):
        lines = script.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("#!"):
            lines[0] = "#!/usr/bin/python3\n"
        target = bindir / script.name
        target.write_text("".join(lines))
        target.chmod(0o755)
    shutil.rmtree(src)


def _config(image: spec.ImageSpec, tag: str) -> dict[str, object]:
    return {
        "Entrypoint": list(image.entrypoint),
        "Env": [f"{k}={v}" for k, v in spec.env_of(image).items()],
        "User": str(spec.UID),
        "WorkingDir": image.workdir,
        "ExposedPorts": {f"{p}/tcp": {} for p in image.ports},
        "Labels": {"org.opencontainers.image.title": f"perfpilot-{image.name}",
                   "org.opencontainers.image.version": tag},
    }


def _layer(image: spec.ImageSpec, base: Path, work: Path, wheel: Path, logfile: Path) -> Path:
    """Build the image's own layer (usr/local and the app dir) in `work`; returns its directory."""
    merged = work / "merged"
    t = time.monotonic()
    subprocess.run(["cp", "-al", str(base), str(merged)], check=True)   # hard links: instant, base untouched
    site = merged / spec.SITE_PACKAGES.lstrip("/")
    rootfs._run(_pip("install", "-q", "--target", str(site), *spec.PIP_FLAGS, *spec.HOST_PIP_FLAGS,
                     f"{wheel}[{','.join(image.extras)}]"), f"pip install [{','.join(image.extras)}]", logfile)
    _write_scripts(site, merged / "usr/local/bin")
    log(f"{image.name}: pip install [{','.join(image.extras)}] {time.monotonic() - t:.1f}s")
    dirs = [spec.SITE_PACKAGES]
    if image.app_source:
        shutil.copytree(ROOT / image.app_source, merged / spec.APP_DIR.lstrip("/"),
                        ignore=shutil.ignore_patterns(*_SKIP_NAMES, "*.pyc"))
        dirs.append(spec.APP_DIR)
    t = time.monotonic()
    env = spec.env_of(image)
    rootfs._run(chroot_cmd(merged, [*spec.PYC.split(), *dirs], env=env), "compileall", logfile)
    log(f"{image.name}: bytecode {time.monotonic() - t:.1f}s")
    if image.bake_kernels:
        t = time.monotonic()
        log(f"{image.name}: baking numba kernels into {spec.NUMBA_CACHE} (~1 min) ...")
        with rootfs.mounted(merged):
            rootfs._run(chroot_cmd(merged, spec.BAKE_KERNELS.split(), env=env), "kernel bake", logfile)
        log(f"{image.name}: kernels baked in {time.monotonic() - t:.1f}s "
            f"({rootfs.du_mb(merged / spec.NUMBA_CACHE.lstrip('/')):.1f} MB)")
    layer = work / "layer"
    for rel in ("usr/local", spec.APP_DIR.lstrip("/") if image.app_source else None):
        if rel:
            (layer / rel).parent.mkdir(parents=True, exist_ok=True)
            (merged / rel).rename(layer / rel)
    rootfs.remove_tree(merged)
    return layer


def _cached(meta: Path, tar: Path) -> ImageRef:
    known = json.loads(meta.read_text())
    return ImageRef(name=known["name"], ref=known["ref"], tag=known["tag"], tar=tar, raw_mb=known["raw_mb"],
                    gz_mb=known["gz_mb"], build_s=0.0, cached=True)


def built(name: str) -> ImageRef | None:
    """The image for the current sources if it is already in the cache, else None (no build)."""
    tar = IMAGES / f"{name}-{image_tag(spec.SPECS[name])}.tar"
    meta = tar.with_suffix(".json")
    return _cached(meta, tar) if meta.exists() and tar.exists() else None


def build(name: str) -> ImageRef:
    """Build (or reuse) one image; returns where its tarball is."""
    image = spec.SPECS[name]
    base = rootfs.ensure_base()
    tag = image_tag(image)
    ref = image.ref(tag)
    tar = IMAGES / f"{name}-{tag}.tar"
    meta = tar.with_suffix(".json")
    if meta.exists() and tar.exists():
        return _cached(meta, tar)
    with rootfs.build_lock(name):
        if meta.exists() and tar.exists():
            return _cached(meta, tar)
        t0 = time.monotonic()
        log(f"{name}: building {ref}")
        wheel = ensure_wheel()
        for stale in IMAGES.glob(f".{name}-*.tmp"):   # a build that failed or was killed
            rootfs.remove_tree(stale)
        work = IMAGES / f".{name}-{tag}.tmp"
        work.mkdir(parents=True)
        layer = _layer(image, base, work, wheel, work / "build.log")
        t = time.monotonic()
        oci.write_image(ref, [base, layer], _config(image, tag), tar)
        log(f"{name}: OCI tarball {time.monotonic() - t:.1f}s")
        raw = rootfs.du_mb(base) + rootfs.du_mb(layer)
        result = ImageRef(name=name, ref=ref, tag=tag, tar=tar, raw_mb=round(raw, 1),
                          gz_mb=round(tar.stat().st_size / 1e6, 1), build_s=round(time.monotonic() - t0, 1),
                          cached=False)
        meta.write_text(json.dumps({k: v for k, v in asdict(result).items()
                                    if k not in ("tar", "build_s", "cached")} | {"first_build_s": result.build_s}))
        rootfs.remove_tree(work)
        pruned = prune(name)
        if pruned:
            log(f"{name}: removed {len(pruned)} older tarball(s) of this image from the cache")
        log(f"{name}: {ref} built in {result.build_s:.0f}s ({result.raw_mb:.0f} MB raw, {result.gz_mb:.0f} MB gzipped)")
        return result


KEEP = 3
"""Tarballs kept per image: a source change makes a new tag (~150 MB gzipped each), so without a
bound the cache grows with every edit; other checkouts on older sources rebuild theirs if needed."""


def prune(name: str, keep: int = KEEP) -> list[Path]:
    """Remove all but the `keep` newest tarballs (and their .json) of image `name`."""
    tars = sorted(IMAGES.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    old = [t for t in tars if t.stem.removeprefix(f"{name}-").isalnum()][keep:]
    for tar in old:
        tar.unlink(missing_ok=True)
        tar.with_suffix(".json").unlink(missing_ok=True)
    return old


def build_all(names: Iterable[str] = tuple(spec.SPECS)) -> dict[str, ImageRef]:
    """Every image (or those named), built or reused from the cache; name -> ImageRef."""
    return {name: build(name) for name in names}


def import_all(images: dict[str, ImageRef], address: str) -> float:
    """Load the tarballs into the containerd at `address` (k8s.io namespace); returns seconds."""
    t0 = time.monotonic()
    for image in images.values():
        oci.import_image(image.tar, address)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.images", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(spec.SPECS), help="comma-separated image names")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(spec.SPECS))
    if unknown:
        parser.error(f"unknown image(s) {unknown}; known: {sorted(spec.SPECS)}")
    t0 = time.monotonic()
    try:
        t = time.monotonic()
        base = rootfs.ensure_base()
        log(f"base: {base.parent.name} ({time.monotonic() - t:.1f}s)")
        images = build_all(names)
    except (BuildError, oci.ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({n: {**asdict(i), "tar": str(i.tar)} for n, i in images.items()}, indent=2))
    else:
        for i in images.values():
            how = "cached" if i.cached else f"built in {i.build_s:.0f}s"
            print(f"  {i.ref:<48} {i.raw_mb:6.0f} MB raw {i.gz_mb:6.0f} MB gz  {how}  {i.tar}")
    log(f"images ready in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
