"""A real redis-server for the shared cache tier's tests and benchmark (Debian's package, installed
by scripts/ensure-debs.sh): loopback only, no persistence, a port derived from PERFPILOT_PORT_BASE
so parallel checkouts do not collide. kill() and start() again on the same port are how the tests
make an outage and a recovery. With `tls=throwaway_tls(...)` it serves TLS only (rediss://) with a
server certificate of a throw-away CA (issued like the operator's, perfpilot_operator.certs).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import serialization

from perfpilot_operator.certs import issue, new_authority

PORT = 16379
"""Port at base 0; a run uses PORT + PERFPILOT_PORT_BASE + its own offset (tests 0, bench 10)."""


def binary() -> str | None:
    """redis-server's path, or None when the Debian package is not installed (make debs)."""
    return shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server",) if os.path.exists(p)), None)


def port_for(offset: int) -> int:
    """The loopback port for this checkout (PERFPILOT_PORT_BASE) and this user of it (offset)."""
    return PORT + int(os.environ.get("PERFPILOT_PORT_BASE", "0")) + offset


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server pair it signed: what redis-server serves, what a client trusts."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = check_hostname
        return context


def throwaway_tls(directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A new CA and a server certificate for `names` (SANs), written into `directory`."""
    now = dt.datetime.now(dt.UTC)
    ca = new_authority(now)
    key_pem, cert_pem = issue(ca, names[0], names=names, now=now, not_after=now + dt.timedelta(days=1))
    directory.mkdir(parents=True, exist_ok=True)
    out = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    out.ca.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert_pem)
    out.key.touch(mode=0o600)
    out.key.write_bytes(key_pem)
    return out


class RedisServer:
    """One redis-server process; a context manager that always stops it."""

    def __init__(self, port: int, *, password: str | None = None, tls: TlsFiles | None = None) -> None:
        exe = binary()
        if exe is None:
            raise FileNotFoundError("redis-server is not installed: run `make debs` (Debian package redis-server)")
        self.exe = exe
        self.port = port
        self.password = password
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="pp-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (again) and wait until it answers PING."""
        listen = ["--port", str(self.port)]
        if self.tls:  # TLS only: the plaintext port is off, clients need not present a certificate
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                      "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                      "--tls-auth-clients", "no"]
        args = [self.exe, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited ({self.proc.returncode}): {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                # readiness only: a test may serve a certificate for another name on purpose
                s = self.tls.client_context(check_hostname=False).wrap_socket(raw) if self.tls else raw
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: an outage as abrupt as a crashed server."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 5 s)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
