"""A minimal OCI image-layout writer and importer: images without Docker or a registry.

`write_image` packs directories (or ready .tar files) as gzipped layers and writes an OCI
image-layout tarball (`oci-layout`, `index.json`, `blobs/sha256/...`) that containerd's
`ctr images import` understands; `import_image` loads it into a containerd's `k8s.io`
namespace, where the kubelet finds it (pods use `imagePullPolicy: Never`/`IfNotPresent`).

Reproducible on purpose: entries sorted, mtimes 0, no user/group names, gzip without a
timestamp. The same inputs give the same digests, so a cache keyed by content stays valid.
Image references are `localhost/perfpilot/<name>:<tag>` (no registry host anywhere).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# The keys of the OCI image config's `config` object that callers may set.
CONFIG_KEYS = frozenset({"Entrypoint", "Cmd", "Env", "User", "WorkingDir", "Labels",
                         "ExposedPorts", "Volumes", "StopSignal"})
# Top-level directories whose contents belong to the runtime, never to an image.
_RUNTIME_DIRS = ("proc", "sys")
_EPOCH = "1970-01-01T00:00:00Z"


class ImageError(ValueError):
    """Bad input to the image writer, or a failed import; the message names what and why."""


def split_ref(ref: str) -> tuple[str, str]:
    """`localhost/perfpilot/pause:3.10.1` -> (`localhost/perfpilot/pause`, `3.10.1`)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name or not tag:
        raise ImageError(f"image reference {ref!r} needs an explicit tag (name:tag)")
    return name, tag


def go_arch() -> str:
    """This machine's architecture in OCI/Go spelling."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine)


class _Sink(Protocol):
    """What _Digesting writes through to: a binary file or a GzipFile."""

    def write(self, data: memoryview, /) -> object: ...


class _Digesting(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.sink.write(view)
        return len(view)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


def _walk(root: Path) -> Iterator[Path]:
    """Every path under `root` (symlinks not followed); /proc and /sys kept empty."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and rel.parts[0] in _RUNTIME_DIRS:
            dirnames[:] = []
            continue
        for name in (*dirnames, *filenames):
            yield Path(dirpath) / name


def pack_directory(root: Path, sink: IO[bytes] | io.RawIOBase) -> None:
    """Write `root` as a reproducible PAX tar (paths relative to it) into `sink`."""
    if not root.is_dir():
        raise ImageError(f"layer directory {root} does not exist")
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        entries = sorted(_walk(root), key=lambda p: p.relative_to(root).parts)
        for path in entries:
            st = path.lstat()
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue   # device nodes and sockets: the runtime provides /dev
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.mtime = 0
            info.uname = info.gname = ""
            info.pax_headers = {}
            if info.isreg():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def _write_layer(src: Path, blobs: Path) -> tuple[dict[str, Any], str]:
    """Gzip one layer into blobs/; return its descriptor and its diff_id (digest of the tar)."""
    tmp = blobs / f".layer-{os.getpid()}-{id(src)}"
    with tmp.open("wb") as raw:
        outer = _Digesting(raw)
        with gzip.GzipFile(fileobj=outer, mode="wb", mtime=0, compresslevel=6) as gz:
            inner = _Digesting(gz)
            if src.is_dir():
                pack_directory(src, inner)
            elif src.is_file() and src.name.endswith(".tar"):
                with src.open("rb") as fh:
                    shutil.copyfileobj(fh, inner, 1 << 20)
            else:
                raise ImageError(f"layer {src} must be a directory or an uncompressed .tar file")
    tmp.rename(blobs / outer.sha.hexdigest())
    return ({"mediaType": MEDIA_LAYER, "digest": outer.digest, "size": outer.size},
            inner.digest)


def _write_blob(blobs: Path, media_type: str, doc: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_image(ref: str, layers: list[Path], config: dict[str, Any], out: Path) -> Path:
    """Write an OCI image-layout tarball of `layers` (bottom first) to `out`; return `out`.

    `config` holds keys of the OCI image config's `config` object (Entrypoint, Cmd, Env, User,
    WorkingDir, Labels, ExposedPorts, ...). The index's manifest is annotated with the full
    reference (containerd's name for the image) and the tag (the OCI ref name).
    """
    _, tag = split_ref(ref)
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ImageError(f"image config keys {unknown} are not OCI config keys; "
                         f"use {sorted(CONFIG_KEYS)}")
    if not layers:
        raise ImageError(f"image {ref} needs at least one layer")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".oci-", dir=out.parent) as tmpdir:
        layout = Path(tmpdir)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        descriptors, diff_ids = [], []
        for src in layers:
            desc, diff_id = _write_layer(Path(src), blobs)
            descriptors.append(desc)
            diff_ids.append(diff_id)
        arch = go_arch()
        image_config = {
            "architecture": arch,
            "os": "linux",
            "created": _EPOCH,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": _EPOCH, "created_by": f"perfpilot oci.py layer {i}"}
                        for i in range(len(layers))],
        }
        config_desc = _write_blob(blobs, MEDIA_CONFIG, image_config)
        manifest_desc = _write_blob(blobs, MEDIA_MANIFEST, {
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": config_desc, "layers": descriptors,
        })
        manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
        manifest_desc["annotations"] = {ANNOTATION_IMAGE_NAME: ref, ANNOTATION_REF_NAME: tag}
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_desc]},
            sort_keys=True, separators=(",", ":")))
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(layout.rglob("*"), key=lambda p: p.relative_to(layout).parts):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if info.isdir() else 0o644
                if info.isreg():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        partial.replace(out)
    return out


def import_image(tar: Path, address: str, *, timeout: float = 300) -> None:
    """Import an OCI tarball into the containerd at `address` (namespace k8s.io), unpacked
    into the default snapshotter so the kubelet can run it without pulling."""
    ctr = shutil.which("ctr")
    if ctr is None:
        raise ImageError("`ctr` (containerd's client) is missing: run `make debs`")
    cmd = [ctr, "--address", address, "-n", "k8s.io", "images", "import",
           "--no-unpack=false", str(tar)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"importing {tar} into {address} timed out after {timeout:.0f}s") \
            from exc
    if proc.returncode != 0:
        raise ImageError(f"ctr images import {tar} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
