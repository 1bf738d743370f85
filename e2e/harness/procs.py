"""Process helpers shared by the local cluster's launchers (control plane, real node, dev)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 30.0,
               interval: float = 0.1) -> Any:
    """Poll until pred() is truthy and return it; TimeoutError naming `what` after `timeout` s.
    The one deadline-bounded wait of the e2e suite, the harness and the benchmarks."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def terminate(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group, then SIGKILL after `grace` seconds. True if it was alive."""
    if not pid_alive(pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start_logged(argv: list[str], *, name: str, logs: Path, pids: Path, cwd: Path) -> int:
    """Start a daemon in its own session, output appended to logs/<name>.log, pid in
    pids/<name>.pid (how the cluster and the real node find their processes again); its pid."""
    with (logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    (pids / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def read_pid(pids: Path, name: str) -> int | None:
    """The pid recorded by start_logged, or None."""
    try:
        return int((pids / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
