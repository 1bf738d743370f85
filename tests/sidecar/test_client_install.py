"""`pip install "perfpilot[client]"` is enough for `import perfpilot_client`: the package is built from
a copy of the source and installed with its client extra into an empty directory, which a
`python -S` interpreter (no site-packages, so none of the dev venv's NumPy, numba or psutil) then
imports. pip's wheel cache keeps this to seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a package build and a pip install (~20 s) plus a cold mypy run

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("numpy", "numba", "llvmlite", "psutil", "prometheus_client", "kopf", "kubernetes")


@pytest.fixture(scope="module")
def client_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding exactly what `pip install "perfpilot[client]"` installs."""
    tmp = tmp_path_factory.mktemp("client-install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sidecar", "operator"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    site = tmp / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(site),
         f"{src}[client]"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    yield site


def run_isolated(site: Path, code: str) -> str:
    """Run `code` in `python -S` with only `site` added to sys.path; returns stdout."""
    prelude = f"import sys; sys.path.insert(0, {str(site)!r})\n"
    out = subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True,
                         timeout=120, cwd=site, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_client_extra_installs_only_the_wire_protocol(client_site: Path) -> None:
    installed = {p.name.split("-")[0].lower() for p in client_site.glob("*.dist-info")}
    assert {"perfpilot", "grpcio", "protobuf"} <= installed
    assert not installed & set(FORBIDDEN), installed


def test_client_imports_with_only_the_client_extra(client_site: Path) -> None:
    code = (
        "import perfpilot_client, perfpilot_client.asgi\n"
        "from perfpilot_client import AgentClient, AsyncAgentClient, measure, PerfpilotMiddleware\n"
        "c = AgentClient('/nonexistent/agent.sock'); c.close()\n"
        f"print(perfpilot_client.__file__, sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    file, loaded = run_isolated(client_site, code).split(" ", 1)
    assert file.startswith(str(client_site))  # the installed copy, not the source tree
    assert loaded == "[]"


def test_run_kernel_without_numpy_names_the_extra(client_site: Path) -> None:
    code = (
        "from perfpilot_client import AgentClient\n"
        "c = AgentClient('/nonexistent/agent.sock')\n"
        "try:\n"
        "    c.run_kernel('cosine_topk', query=[[1.0]], matrix=[[1.0]], k=1)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "c.close()\n"
    )
    assert 'pip install "perfpilot[client-kernels]"' in run_isolated(client_site, code)


def test_type_markers_are_installed(client_site: Path) -> None:
    for package in ("perfpilot", "perfpilot_client"):
        assert (client_site / package / "py.typed").is_file(), package
    assert (client_site / "perfpilot" / "v1" / "agent_pb2.pyi").is_file()
    assert (client_site / "perfpilot" / "v1" / "agent_pb2_grpc.pyi").is_file()


def test_installed_client_is_typed_for_mypy_strict(client_site: Path, tmp_path: Path) -> None:
    """mypy --strict on examples/05-client/app.py against the *installed* packages: mypy only reads
    an installed package with a py.typed marker, and assert_type in the example fails if a
    response types as Any. The stub-only packages (types-protobuf, types-grpcio) come from the dev
    venv, as an app developer installs them next to the client."""
    pytest.importorskip("mypy")
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    stubs = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    Path(purelib, "client.pth").write_text("\n".join([str(client_site), *stubs]) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", str(python),
         str(ROOT / "examples" / "05-client" / "app.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
