"""The project's static checks, one list for `make lint` and for `make test` (tests/checks/test_lint.py).

ruff (rules in pyproject.toml [tool.ruff]) over the whole tree, and mypy --strict over the shipped
packages, the e2e harness and the benchmarks ([tool.mypy] names them). Exits non-zero naming each check that failed and how to rerun it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS: list[tuple[str, list[str]]] = [
    ("ruff check", [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."]),
    ("mypy --strict", [sys.executable, "-m", "mypy"]),
]


def run() -> list[tuple[str, str]]:
    """Run every check; return (name, output) for each that failed."""
    failed = []
    for name, cmd in CHECKS:
        print(f"[lint] {name}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            failed.append((name, out))
            print(out, flush=True)
    return failed


def main() -> int:
    failed = run()
    if failed:
        names = ", ".join(n for n, _ in failed)
        print(f"[lint] FAILED: {names} (rerun: make lint; ruff's [*] fixes: "
              f".venv/bin/ruff check --fix .)", file=sys.stderr)
        return 1
    print("[lint] ruff and mypy --strict: no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
