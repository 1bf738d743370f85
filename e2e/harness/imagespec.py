"""What goes into perfpilot's images: the one description both build paths follow.

The local recipe (`e2e/harness/images.py`, `make images`: no Docker, no registry) builds from it,
and the Dockerfiles (sidecar/Dockerfile, operator/Dockerfile, examples/app/Dockerfile, for users
with Docker) spell the same choices out; tests/harness/test_image_recipe.py parses the
Dockerfiles and fails when they drift from this module.

Pinned: the Debian release and its python3 package (bookworm's 3.11), the wheel platform (the
glibc of that release), and the Python packages through pyproject.toml's extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEBIAN_SUITE = "bookworm"
PYTHON = "3.11"
PYTHON_DEB = "3.11.2-1+b1"
"""bookworm's python3 package; the recipe refuses a base whose python3 differs."""
BASE_DEBS = ("ca-certificates",)
"""Debian packages every image gets besides python3 (unpinned: security updates): the system CA
store, which minbase and -slim lack; the sidecar verifies a rediss:// shared tier against it."""
GLIBC_MINOR = 36
"""bookworm's glibc is 2.36."""
WHEEL_PLATFORMS = (*(f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 16, -1)), "manylinux2014_x86_64")
"""The wheel tags bookworm's python3 accepts, newest first: pip on another machine must be told
each one (`--platform manylinux2014_x86_64` alone finds no numpy 2.4: its wheels are 2_27/2_28)."""
SITE_PACKAGES = f"/usr/local/lib/python{PYTHON}/dist-packages"
"""Debian's python3 imports from here; pip installs here with --target."""
UID = 65532
USER = "perfpilot"
HOME = "/home/perfpilot"
NUMBA_CACHE = "/usr/local/share/perfpilot/numba"
"""numba's on-disk cache, compiled at build time by root and read-only at run time."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BAKE_KERNELS = "python3 -m perfpilot_agent.kernels.bake"
"""The build step that compiles every kernel into NUMBA_CACHE (run as root, in the image)."""
PIP_FLAGS = ("--only-binary=:all:", "--no-compile")
"""pip flags of the install into SITE_PACKAGES, in both build paths (wheels only; bytecode is
compiled afterwards by the image's python3, see PYC)."""
HOST_PIP_FLAGS = (*(f"--platform={p}" for p in WHEEL_PLATFORMS), f"--python-version={PYTHON}",
                  "--implementation=cp")
"""Only the local recipe, whose pip runs on the host: the image's platform and Python spelled
out. The Dockerfiles run pip inside the same Debian release with its python3, natively."""
PYC = "python3 -m compileall -q -f --invalidation-mode unchecked-hash"
"""Bytecode that stays valid whatever the layer's mtimes (the OCI writer sets them to 0) and
on a read-only root filesystem, where Python could not rewrite stale .pyc files."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: what is installed and how it runs."""

    name: str
    extras: tuple[str, ...]
    entrypoint: tuple[str, ...]
    ports: tuple[int, ...]
    dockerfile: str
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    bake_kernels: bool = False
    app_source: str | None = None
    """A directory of the repository copied to APP_DIR (the example app)."""

    def ref(self, tag: str) -> str:
        """The image reference, e.g. localhost/perfpilot/sidecar:<tag> (no registry host)."""
        return f"localhost/perfpilot/{self.name}:{tag}"


APP_DIR = "/app"
BASE_ENV = {"PATH": PATH, "HOME": HOME, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}

SPECS: dict[str, ImageSpec] = {
    "sidecar": ImageSpec(
        name="sidecar", extras=("sidecar",), entrypoint=("perfpilot-sidecar",),
        ports=(50051, 9464), dockerfile="sidecar/Dockerfile", workdir=HOME,
        env={"NUMBA_CACHE_DIR": NUMBA_CACHE}, bake_kernels=True),
    "operator": ImageSpec(
        name="operator", extras=("operator",), entrypoint=("perfpilot-operator",),
        ports=(9443, 8080, 8081), dockerfile="operator/Dockerfile"),
    "example-app": ImageSpec(
        name="example-app", extras=("client-kernels",), entrypoint=("python3", f"{APP_DIR}/app.py"),
        ports=(8000,), dockerfile="examples/app/Dockerfile", workdir=APP_DIR,
        app_source="examples/app"),
}


def env_of(spec: ImageSpec) -> dict[str, str]:
    """The image's environment: the common variables, then the image's own."""
    return {**BASE_ENV, **spec.env}
