"""The pool worker process: a loop reading requests from its pipe and answering them.

Runs in a process started with the ``spawn`` context. numba is imported here lazily, at the
first ``warm`` or ``run`` request, after ``NUMBA_NUM_THREADS`` has been set for this worker.

Protocol (tuples over a ``multiprocessing`` duplex Connection; one request in flight at a time):

    parent -> worker                                   worker -> parent
    ("warm", names, variants)                          ("warmed", {name: seconds})
    ("run", kernel, arrays, params, outs, threads, parallel, forget)
                                                       ("ok", {name: ndarray | None})
                                                       ("err", error_class_name, message)
    ("probe", arrays, forget)                          ("ok", {"nbytes": int})
    ("stop",)                                          ("bye",)  then exit

``arrays`` maps input names to an ndarray (pickled path) or a ``shm.ShmRef`` (attached read-only
here). ``outs`` maps output names to ``ShmRef``s the parent allocated; results named there are
written into shared memory and sent back as ``None``. ``forget`` lists long-lived segments the
parent has unlinked since its previous message to this worker (drop their cached mappings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import shm


@contextlib.contextmanager
def _mapping(name: str) -> Iterator[None]:
    """Around opening and mapping a segment of this call. The segments are the pool's own, written
    by the parent just before: failing to open or map one (gone, emptied between fstat and mmap)
    means another process tampered with it, so the call fails as SegmentLost (UNAVAILABLE), not
    as an internal error."""
    try:
        yield
    except shm.SegmentTruncated:
        raise
    except (OSError, ValueError) as e:
        raise shm.SegmentTruncated(f"shared memory segment {name!r} cannot be mapped: {e}") from None


def _resolve(
    arrays: dict[str, Any], attachments: list[shm.Attachment], cache: shm.MappingCache
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, val in arrays.items():
        if not isinstance(val, shm.ShmRef):
            out[key] = val
            continue
        with _mapping(val.name):
            if val.keep:
                out[key] = cache.view(val)
                continue
            att = shm.Attachment(val, writable=False)
        attachments.append(att)
        assert att.array is not None
        out[key] = att.array
    return out


def main(conn: Any, max_threads: int) -> None:
    # Ctrl-C in a terminal goes to the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, int(max_threads)))
    jit = None
    cache = shm.MappingCache()
    from . import errors, registry

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return  # parent is gone
        op = msg[0]
        try:
            if op == "stop":
                conn.send(("bye",))
                conn.close()
                # Nothing to flush or finalise: skip interpreter teardown (numba/OpenMP shutdown
                # takes ~0.4 s), which makes shrinking and closing the pool fast.
                os._exit(0)
            if op == "warm":
                if jit is None:
                    from . import jit as jit_mod

                    jit = jit_mod
                _, names, variants = msg
                conn.send(("warmed", jit.warm(names, variants=variants)))
                continue
            if op == "probe":
                attachments: list[shm.Attachment] = []
                cache.forget(msg[2])
                try:
                    arrays = _resolve(msg[1], attachments, cache)
                    total = 0
                    for a in arrays.values():
                        flat = a.reshape(-1).view(np.uint8)
                        flat[::4096].sum(dtype=np.int64)  # touch one byte per page: really delivered
                        total += a.nbytes
                    conn.send(("ok", {"nbytes": total}))
                finally:
                    for att in attachments:
                        att.close()
                continue
            if op == "run":
                _, kernel, arrays_in, params, outs, threads, parallel, forget = msg
                cache.forget(forget)
                attachments = []
                try:
                    if jit is None:
                        from . import jit as jit_mod

                        jit = jit_mod
                    arrays = _resolve(arrays_in, attachments, cache)
                    registry.check_input_values(kernel, arrays, params)
                    nthreads = jit.set_threads(threads)
                    result = jit.run_kernel(kernel, arrays, params, parallel=bool(parallel) and nthreads > 1)
                    del arrays
                    reply: dict[str, Any] = {}
                    for key, val in result.items():
                        ref = outs.get(key) if outs else None
                        if ref is not None:
                            with _mapping(ref.name):
                                att = shm.Attachment(ref, writable=True, populate=False)
                            attachments.append(att)
                            assert att.array is not None
                            att.array[...] = val
                            reply[key] = None
                        else:
                            reply[key] = val
                    conn.send(("ok", reply))
                except errors.KernelError as e:
                    conn.send(("err", type(e).__name__, str(e)))
                except shm.SegmentTruncated as e:  # another process truncated a segment of this call
                    conn.send(("err", "SegmentLost", f"{kernel}: {e}"))
                except Exception as e:  # a bug or resource problem: report, keep serving
                    conn.send(("err", "KernelError", f"{kernel}: {type(e).__name__}: {e}"))
                finally:
                    for att in attachments:
                        att.close()
                continue
            conn.send(("err", "KernelError", f"worker: unknown request {op!r}"))
        except (BrokenPipeError, EOFError, ConnectionResetError):
            return
        except Exception as e:  # pragma: no cover - e.g. warm failed
            try:
                conn.send(("err", "KernelError", f"worker {op}: {type(e).__name__}: {e}"))
            except OSError:
                return
        finally:
            sys.stdout.flush()
