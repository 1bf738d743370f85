"""Shared memory between two containers of a pod: the app and the injected sidecar (uid 65532)
run as different users, so each side's segments must be open to the other (0600 is not)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.runtime.tensors import OutputSegments, open_segment, read_segment
from perfpilot_client.shm import new_segment
from perfpilot_client.tensors import decode

OTHER_UID = 65532

def _read_floats(name: str, n: int) -> np.ndarray:
    """Read n float32 from a segment the way the sidecar reads an input (open_segment + pread)."""
    out = np.empty(n, np.float32)
    fd = open_segment("query", pb.SharedMemoryRef(name=name), out.nbytes)
    try:
        read_segment(fd, memoryview(out).cast("B"), 0, path="query")
    finally:
        os.close(fd)
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")


def _as_other_user(fn: Callable[[], str]) -> str:
    """fn() in a forked child running as OTHER_UID (no exec: the venv may be unreadable to it);
    its result, or the exception it raised, comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            text = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            text, code = f"{type(e).__name__}: {e}", 1
        os.write(w, text.encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_segment_modes() -> None:
    seg = new_segment(4096)
    try:
        assert os.fstat(seg._fd).st_mode & 0o777 == 0o644   # type: ignore[attr-defined]
    finally:
        seg.close()
        seg.unlink()
    out = OutputSegments(grace=0)
    ref = out.create(np.arange(8, dtype=np.float32))
    try:
        assert os.stat(f"/dev/shm/{ref.name}").st_mode & 0o777 == 0o666
    finally:
        out.reap(everything=True)


@needs_root
def test_sidecar_of_another_uid_reads_the_apps_input() -> None:
    seg = new_segment(16)
    try:
        np.ndarray((4,), np.float32, buffer=seg.buf)[:] = [1, 2, 3, 4]
        name = seg.name
        assert _as_other_user(
            lambda: str(_read_floats(name, 4).sum())) == "10.0"
    finally:
        seg.close()
        seg.unlink()


@needs_root
def test_app_of_another_uid_reads_the_sidecars_output() -> None:
    out = OutputSegments(grace=60)
    ref = out.create(np.arange(4, dtype=np.float32))
    t = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[4], shm=pb.SharedMemoryRef(name=ref.name))
    try:
        assert _as_other_user(lambda: str(decode(t).sum())) == "6.0"
    finally:
        out.reap(everything=True)
