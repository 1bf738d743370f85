"""L1 across real processes: a real sidecar (`perfpilot-sidecar`, cache.l1 on through --config) and
two app processes. The other app is a child Python process driven over stdin/stdout; this test
process is the first app. Covers fills, an invalidation from one process reaching the other's L1,
dependency invalidation, and the sidecar dying (L1 stops serving) and coming back (resync)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfpilot_client import AgentClient

SCRIPT = Path(sys.executable).parent / "perfpilot-sidecar"
CONFIG = json.dumps({"pools": {"processWorkers": 0}, "cache": {"l1": {"enabled": True, "ttl": "1h"}}})

OTHER_APP = textwrap.dedent("""
    import json, sys, time
    from perfpilot_client import AgentClient

    def until(cond, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    agent = AgentClient(sys.argv[1], timeout=5)
    agent.cache_get("warm")
    until(agent.l1.serving)
    for line in sys.stdin:
        cmd, _, key = line.strip().partition(" ")
        out = {}
        if cmd == "read":            # read twice: the second must be an L1 hit
            out = {"value": (agent.cache_get(key) or b"").decode(), "again": (agent.cache_get(key) or b"").decode(),
                   "hits": agent.l1.hits, "in_l1": key in agent.l1._cache}
        elif cmd == "dropped":       # wait for the event that drops `key` from L1
            out = {"dropped": until(lambda: key not in agent.l1._cache)}
        elif cmd == "lost":
            out = {"stopped": until(lambda: not agent.l1.serving()), "entries": len(agent.l1), "resyncs": agent.l1.resyncs}
        elif cmd == "back":
            out = {"serving": until(agent.l1.serving), "entries": len(agent.l1)}
        print(json.dumps(out), flush=True)
""")


def _sidecar(sock: str) -> subprocess.Popen[str]:
    from tests.sidecar.test_process import _wait_serving

    proc = subprocess.Popen([str(SCRIPT), "--socket", sock, "--port", "-1", "--health-port", "-1", "--metrics-port", "-1", "--grace", "1",
                             "--config", CONFIG], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_serving(sock)
    return proc


class Other:
    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", OTHER_APP, target], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ})

    def ask(self, line: str) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the other app exited"
        result: dict[str, object] = json.loads(reply)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sidecar_sock(sock_dir: str) -> Iterator[str]:
    assert SCRIPT.exists(), "run `make venv` to install the console script"
    yield f"{sock_dir}/l1.sock"


def test_two_app_processes_share_coherent_l1s(sidecar_sock: str) -> None:
    proc = _sidecar(sidecar_sock)
    other = Other(f"unix:{sidecar_sock}")
    try:
        with AgentClient(sidecar_sock) as me:
            me.cache_put("user/1", b"alice")
            me.cache_put("profile/1", b"alice's profile", depends_on=["user/1"])
            assert other.ask("read user/1") == {"value": "alice", "again": "alice", "hits": 1, "in_l1": True}
            assert other.ask("read profile/1")["in_l1"] is True
            me.cache_put("user/1", b"bob")                  # this process overwrites ...
            assert other.ask("dropped user/1") == {"dropped": True}       # ... the other's copy goes
            assert other.ask("dropped profile/1") == {"dropped": True}    # and so does its dependent
            assert other.ask("read user/1")["value"] == "bob"
            assert other.ask("read profile/1")["value"] == ""              # gone from L2 too
            me.cache_put("page/1", b"p", tags=["pages"])
            assert other.ask("read page/1")["in_l1"] is True
            assert me.cache_invalidate(tags=["pages"]) == 1
            assert other.ask("dropped page/1") == {"dropped": True}

        proc.kill()                                          # the sidecar dies: the stream breaks
        proc.wait()
        lost = other.ask("lost")
        assert lost["stopped"] is True and lost["entries"] == 0 and lost["resyncs"] == 1
        proc = _sidecar(sidecar_sock)                        # back, with an empty L2
        assert other.ask("back") == {"serving": True, "entries": 0}
        read = other.ask("read user/1")
        assert read["value"] == "" and read["in_l1"] is False  # nothing served from before the outage
    finally:
        other.close()
        proc.kill()
        proc.wait()
