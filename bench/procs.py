"""Child processes of the benchmark: start, wait until serving, read result lines, always clean up.

Why a module of its own: every latency figure runs client and server in separate processes, so
the benchmark starts many children (sidecars, bare servers, load generators, probes). Each child
gets its own process group (``start_new_session``) so that

* Ctrl-C in the terminal reaches only the orchestrator, which then stops the children itself in
  ``finally`` (a sidecar must drain and stop its pool workers, not die mid-way);
* whatever a child leaves behind (kernel workers, multiprocessing's resource tracker) is killed with
  one ``killpg`` after the child's own shutdown.

Readiness is event driven: the grpc.health.v1 Watch stream (with wait_for_ready) for servers and a
"ready" line on stdout for probes; never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SIDECAR = str(Path(sys.executable).parent / "perfpilot-sidecar")


class ChildFailed(RuntimeError):
    """A child exited early or did not become ready; the message carries the tail of its log."""


class Child:
    """One child process with a line reader on its stdout and its stderr in a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self._buf = b""

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        """The last lines of the child's stderr log (for error messages)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def readline(self, timeout: float) -> str:
        """Next stdout line (without newline); raises ChildFailed on timeout or exit."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"{self.name}: no output within {timeout:.0f}s\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.popen.wait(timeout=5)
                    raise ChildFailed(f"{self.name} exited ({self.popen.returncode}) before answering\n{self.log_tail()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def read_json(self, timeout: float) -> Any:
        """Next stdout line that is a JSON document (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.1, deadline - time.monotonic()))
            if line.startswith(("{", "[")):
                return json.loads(line)

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write((line + "\n").encode())
        self.popen.stdin.flush()


class Procs:
    """Owns every child it starts; `close()` (also on Ctrl-C, via the context manager) stops them all."""

    def __init__(self, tmpdir: str | None = None) -> None:
        self.tmp = tmpdir or tempfile.mkdtemp(prefix="ppb-", dir="/tmp")  # short: Unix socket paths <= 100 bytes
        self._own_tmp = tmpdir is None
        self.children: list[Child] = []
        self._n = 0

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, name: str) -> str:
        """A path inside this run's temporary directory."""
        return os.path.join(self.tmp, name)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cpu: int | None = None,
        stdin: bool = False,
    ) -> Child:
        """Start `cmd` in its own session, pinned to `cpu` if given (through bench.pin, before exec)."""
        self._n += 1
        log_path = Path(self.path(f"{self._n:02d}-{name}.log"))
        full = list(cmd)
        if cpu is not None:
            full = [PY, "-m", "bench.pin", str(cpu), "--", *full]
        merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                full,
                cwd=ROOT,
                env=merged,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def sidecar(
        self,
        name: str,
        *,
        socket_path: str,
        port: int = -1,
        config: dict[str, Any] | None = None,
        cpu: int | None = None,
        extra: Sequence[str] = (),
        module: str | None = None,
        stdin: bool = False,
    ) -> Child:
        """The real sidecar (`perfpilot-sidecar` console script, or `python -m module` with the same flags).
        `port` is its plaintext TCP listener (the health port: Heartbeat and grpc.health.v1); the
        mutual-TLS control port is off (no CA: nothing here plays the operator)."""
        args = ["--socket", socket_path, "--port", "-1", "--health-port", str(port), "--metrics-port", "-1", "--grace", "2",
                "--log-level", "WARNING", *extra]
        if config:
            args += ["--config", json.dumps(config)]
        cmd = [PY, "-m", module, *args] if module else [SIDECAR, *args]
        return self.start(name, cmd, env={}, cpu=cpu, stdin=stdin)

    def bare(self, name: str, *, socket_path: str, port: int = -1, cpu: int | None = None) -> Child:
        """The baseline bare grpc.aio server."""
        return self.start(name, [PY, "-m", "bench.bare_server", "--socket", socket_path, "--port", str(port)], cpu=cpu)

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        """SIGTERM the child (a sidecar drains and stops its workers), then SIGKILL its whole group."""
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # stragglers in its group (workers, resource tracker)
        if child.alive():
            child.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=5)
        for stream in (child.popen.stdin, child.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        """Stop every child (newest first), then remove the temporary directory."""
        # Ctrl-C while stopping must not leave the rest running: finish the loop first.
        pending: BaseException | None = None
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except BaseException as exc:  # noqa: BLE001 - keep stopping the others
                pending = pending or exc
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
        if self._own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if pending is not None:
            raise pending


def wait_serving(child: Child, target: str, timeout: float = 180.0) -> None:
    """Block until the server at `target` reports SERVING on grpc.health.v1 Watch (event driven).

    The Watch call uses wait_for_ready, so it also covers the socket not existing yet; it is
    re-issued every few seconds only to notice a child that died meanwhile.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if not child.alive():
                raise ChildFailed(f"{child.name} exited ({child.popen.returncode}) while starting\n{child.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"{child.name} not SERVING within {timeout:.0f}s\n{child.log_tail()}")
            # types-grpcio-health-checking's HealthStub declares none of its methods.
            stream = stub.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=min(left, 3.0))  # type: ignore[attr-defined]
            try:
                for msg in stream:
                    if msg.status == health_pb2.HealthCheckResponse.SERVING:
                        stream.cancel()
                        return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise


def tree(pid: int) -> list[Any]:
    """psutil.Process of `pid` and all its descendants (those that still exist)."""
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_rss(pid: int) -> tuple[int, list[tuple[str, int]]]:
    """Total RSS bytes of the tree and (name, rss) per process."""
    import psutil

    parts: list[tuple[str, int]] = []
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            parts.append((" ".join(p.cmdline()) or p.name(), p.memory_info().rss))
    return sum(r for _, r in parts), parts


def tree_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of the tree from psutil cpu_times (10 ms clock-tick resolution)."""
    import psutil

    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def tree_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread in the tree, from /proc/<pid>/task/<tid>/schedstat.

    The scheduler's own accounting (sum_exec_runtime), exact to the nanosecond, where psutil's
    cpu_times count 10 ms clock ticks: an idle process uses less than one tick in seconds.
    Threads that exit during a window are not counted (none do in an idle process).
    """
    total = 0
    for p in tree(pid):
        try:
            tids = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{p.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
    return total
