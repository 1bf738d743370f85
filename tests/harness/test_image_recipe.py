"""The local image recipe and the Dockerfiles install the same thing (parsed, not eyeballed),
and the recipe's cache keys move exactly when its inputs do."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from e2e.harness import images, imagespec as spec, rootfs

ROOT = Path(__file__).resolve().parents[2]


def parse(path: Path) -> list[list[tuple[str, str]]]:
    """Dockerfile -> stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


def args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [a for i, a in stage if i == instruction]


def runs(stage: list[tuple[str, str]]) -> list[str]:
    """Every shell command of the stage's RUN lines (split at &&)."""
    return [c.strip() for a in args(stage, "RUN") for c in a.split("&&")]


@pytest.mark.parametrize("name", sorted(spec.SPECS))
def test_dockerfile_installs_what_the_recipe_installs(name: str) -> None:
    image = spec.SPECS[name]
    stages = parse(ROOT / image.dockerfile)
    assert [s[0][1] for s in stages] == [f"debian:{spec.DEBIAN_SUITE}-slim AS base", "base AS install", "base"]
    base, install, final = stages
    # the base: the pinned python3, what the recipe strips, mtime-free stdlib bytecode, the user
    base_cmds = runs(base)
    assert (f"apt-get install -y --no-install-recommends python3={spec.PYTHON_DEB} "
            f"{' '.join(spec.BASE_DEBS)}") in base_cmds
    assert f"rm -rf {' '.join(f'/{r}/*' for r in rootfs._STRIP)}" in base_cmds
    assert f"{spec.PYC} /usr/lib/python{spec.PYTHON} /usr/lib/python3/dist-packages" in base_cmds
    assert (f"useradd --uid {spec.UID} --user-group --create-home --home-dir {spec.HOME} "
            f"--shell /usr/sbin/nologin {spec.USER}") in base_cmds
    # the install: the perfpilot wheel with the image's extras, wheels only, into the same place
    pip = [shlex.split(c) for c in runs(install) if "pip install" in c]
    assert len(pip) == 1
    words = pip[0]
    assert words[words.index("--target") + 1] == spec.SITE_PACKAGES
    assert all(flag in words for flag in spec.PIP_FLAGS)
    assert words[-1] == f"$(ls /wheels/perfpilot-*.whl)[{','.join(image.extras)}]"
    # the final image: same environment, bytecode, bake, user, workdir, ports, entrypoint
    envs = dict(kv.split("=", 1) for a in args(final, "ENV") for kv in shlex.split(a))
    assert envs == spec.env_of(image)
    pyc_dirs = [spec.SITE_PACKAGES, *([spec.APP_DIR] if image.app_source else [])]
    assert f"{spec.PYC} {' '.join(pyc_dirs)}" in runs(final)
    assert (spec.BAKE_KERNELS in runs(final)) == image.bake_kernels
    if image.app_source:
        assert f"{image.app_source} {spec.APP_DIR}" in args(final, "COPY")
    assert args(final, "USER") == [str(spec.UID)]
    assert args(final, "WORKDIR")[-1] == image.workdir
    assert args(final, "EXPOSE") == [" ".join(map(str, image.ports))]
    assert json.loads(args(final, "ENTRYPOINT")[-1]) == list(image.entrypoint)


def test_every_extra_an_image_installs_exists_in_pyproject() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for image in spec.SPECS.values():
        assert set(image.extras) <= set(extras), image.name
    numpy = {r for e in ("sidecar", "client-kernels") for r in extras[e] if r.startswith("numpy")}
    assert len(numpy) == 1, f"the sidecar and the client must pin the same numpy: {numpy}"


def test_wheel_platforms_cover_bookworm_glibc_down_to_manylinux2014() -> None:
    assert spec.WHEEL_PLATFORMS[0] == f"manylinux_2_{spec.GLIBC_MINOR}_x86_64"
    assert spec.WHEEL_PLATFORMS[-2:] == ("manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _tree(tmp: Path) -> Path:
    for rel, text in {"pyproject.toml": "x", "README.md": "r", "sidecar/a.py": "a", "operator/b.py": "b",
                      "examples/app/app.py": "app"}.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return tmp


def test_tag_changes_with_a_source_and_only_with_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "ROOT", _tree(tmp_path))
    side, app = spec.SPECS["sidecar"], spec.SPECS["example-app"]
    before = {n: images.image_tag(s, "base1") for n, s in (("side", side), ("app", app))}
    assert before == {n: images.image_tag(s, "base1") for n, s in (("side", side), ("app", app))}
    (tmp_path / "sidecar" / "__pycache__").mkdir()
    (tmp_path / "sidecar" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "sidecar" / "Dockerfile").write_text("FROM x")
    assert images.image_tag(side, "base1") == before["side"], "bytecode and the Dockerfile are not inputs"
    (tmp_path / "examples" / "app" / "app.py").write_text("app2")
    assert images.image_tag(side, "base1") == before["side"]
    assert images.image_tag(app, "base1") != before["app"]
    (tmp_path / "sidecar" / "a.py").write_text("a2")
    assert images.image_tag(side, "base1") != before["side"]
    assert images.image_tag(side, "base2") != images.image_tag(side, "base1"), "a new base is a new tag"


def test_debian_mirror_comes_from_the_machines_apt_config(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\nComponents: main\n")
    assert rootfs.debian_mirror(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://other.invalid/debian bookworm main contrib\n")
    assert rootfs.debian_mirror(tmp_path) == "http://other.invalid/debian"
    (tmp_path / "sources.list").write_text("deb http://other.invalid/debian trixie main\n")
    with pytest.raises(rootfs.BuildError, match="no apt source for Debian bookworm"):
        rootfs.debian_mirror(tmp_path)


def test_prune_keeps_the_newest_tarballs_of_one_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(images, "IMAGES", tmp_path)
    for i, tag in enumerate(["aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3", "aaaaaaaaaaa4"]):
        for suffix in (".tar", ".json"):
            f = tmp_path / f"sidecar-{tag}{suffix}"
            f.write_text("x")
            os.utime(f, (1000 + i, 1000 + i))
    (tmp_path / "operator-bbbbbbbbbbb1.tar").write_text("x")   # another image: untouched
    removed = images.prune("sidecar", keep=2)
    assert sorted(p.name for p in removed) == ["sidecar-aaaaaaaaaaa1.tar", "sidecar-aaaaaaaaaaa2.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "operator-bbbbbbbbbbb1.tar", "sidecar-aaaaaaaaaaa3.json", "sidecar-aaaaaaaaaaa3.tar",
        "sidecar-aaaaaaaaaaa4.json", "sidecar-aaaaaaaaaaa4.tar"]
