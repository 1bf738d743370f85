"""The OCI image writer (e2e/harness/oci.py), read back with the system `tar` and json: no cluster."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import oci

OWNER = (1234, 5678)


def _rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    os.link(root / "bin" / "tool", root / "bin" / "hard")
    (root / "etc").mkdir()
    (root / "etc" / "owned").write_text("data")
    if os.geteuid() == 0:                                   # ownership is kept as is
        os.chown(root / "etc" / "owned", *OWNER)
    (root / "proc" / "self").mkdir(parents=True)          # runtime dirs: kept, contents not
    (root / "proc" / "self" / "status").write_text("x")
    (root / "sys").mkdir()
    os.mkfifo(root / "etc" / "fifo")
    return root


def _read(layout_tar: Path, dest: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(layout_tar), "-C", str(dest)], check=True)
    index = json.loads((dest / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads(_blob(dest, mdesc["digest"]))
    config = json.loads(_blob(dest, manifest["config"]["digest"]))
    return index, manifest, config


def _blob(dest: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":")
    data = (dest / "blobs" / algo / hexd).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexd, f"blob {digest} does not match its name"
    return data


def test_layout_index_manifest_config_and_digests(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    ref = "localhost/perfpilot/demo:1.2.3"
    cfg = {"Entrypoint": ["/bin/tool"], "Cmd": ["--flag"], "Env": ["PATH=/bin"],
           "User": "65532:65532", "WorkingDir": "/work", "Labels": {"a": "b"},
           "ExposedPorts": {"8080/tcp": {}}}
    out = oci.write_image(ref, [rootfs], cfg, tmp_path / "img.tar")
    index, manifest, config = _read(out, tmp_path / "x")

    assert json.loads((tmp_path / "x" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"}
    mdesc = index["manifests"][0]
    assert mdesc["mediaType"] == oci.MEDIA_MANIFEST
    assert mdesc["annotations"] == {"io.containerd.image.name": ref,
                                    "org.opencontainers.image.ref.name": "1.2.3"}
    assert mdesc["platform"] == {"architecture": oci.go_arch(), "os": "linux"}
    assert mdesc["size"] == len(_blob(tmp_path / "x", mdesc["digest"]))
    assert config["config"] == cfg
    assert config["os"] == "linux"

    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    gz = _blob(tmp_path / "x", layer["digest"])
    assert layer["size"] == len(gz)
    raw = gzip.decompress(gz)
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]}

    # The layer, listed by the system tar: sorted, relative paths, runtime dirs empty.
    listing = subprocess.run(["tar", "-tzf", "-"], input=gz, capture_output=True,
                             check=True).stdout.decode()
    names = [line.rstrip("/") for line in listing.splitlines()]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert "proc" in names and "sys" in names and "proc/self" not in names
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    # Sorted order: bin/hard comes first and holds the data, bin/tool links to it.
    assert members["bin/tool"].islnk() and members["bin/tool"].linkname == "bin/hard"
    assert members["bin/tool"].mode & 0o777 == 0o755
    owner = OWNER if os.geteuid() == 0 else (os.getuid(), os.getgid())
    assert (members["etc/owned"].uid, members["etc/owned"].gid) == owner
    assert members["etc/fifo"].isfifo()
    assert all(m.mtime == 0 and m.uname == "" for m in members.values())


def test_reproducible(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    a = oci.write_image("localhost/perfpilot/r:1", [rootfs], {}, tmp_path / "a.tar")
    os.utime(rootfs / "bin" / "tool", (1e9, 1e9))   # mtimes do not matter
    b = oci.write_image("localhost/perfpilot/r:1", [rootfs], {}, tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()


def test_existing_tar_layer_and_layer_order(tmp_path: Path) -> None:
    base = _rootfs(tmp_path / "rootfs")
    top = tmp_path / "top.tar"
    with tarfile.open(top, "w") as tar:
        info = tarfile.TarInfo("app/main")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"app"))
    out = oci.write_image("localhost/perfpilot/two:t", [base, top], {"Cmd": ["x"]},
                          tmp_path / "two.tar")
    _, manifest, config = _read(out, tmp_path / "x")
    assert len(manifest["layers"]) == 2 == len(config["rootfs"]["diff_ids"])
    top_gz = _blob(tmp_path / "x", manifest["layers"][1]["digest"])
    assert gzip.decompress(top_gz) == top.read_bytes()
    assert config["rootfs"]["diff_ids"][1] == f"sha256:{hashlib.sha256(top.read_bytes()).hexdigest()}"


@pytest.mark.parametrize(("ref", "layers", "config", "needle"), [
    ("localhost/perfpilot/notag", "dir", {}, "explicit tag"),
    ("localhost:5000/perfpilot/x", "dir", {}, "explicit tag"),
    ("localhost/perfpilot/x:1", "dir", {"Entrypiont": ["/x"]}, "Entrypiont"),
    ("localhost/perfpilot/x:1", "none", {}, "at least one layer"),
    ("localhost/perfpilot/x:1", "gz", {}, "uncompressed .tar"),
])
def test_bad_input_named(tmp_path: Path, ref: str, layers: str, config: dict[str, Any],
                         needle: str) -> None:
    rootfs = _rootfs(tmp_path / "rootfs")
    gz = tmp_path / "l.tar.gz"
    gz.write_bytes(gzip.compress(b""))
    chosen = {"dir": [rootfs], "none": [], "gz": [gz]}[layers]
    with pytest.raises(oci.ImageError, match=needle):
        oci.write_image(ref, chosen, config, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def test_split_ref() -> None:
    assert oci.split_ref("localhost/perfpilot/pause:3.10.1") == ("localhost/perfpilot/pause",
                                                                 "3.10.1")
