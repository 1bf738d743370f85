"""`python -m perfpilot_agent.kernels.bake`: compile every kernel into NUMBA_CACHE_DIR, at image build.

Run as root inside the image's own filesystem (the recipe uses chroot, the Dockerfile a RUN step)
so the cached entries carry the paths the sidecar will import from. Afterwards the directory is
only read: a sidecar whose kernels are all in it loads machine code instead of compiling (see
``numbacache`` for the read-only case and for what happens on another CPU model).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    """Compile both variants of every kernel and the bandwidth probe; print what it cost."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        print("bake: set NUMBA_CACHE_DIR to the directory the image ships", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from . import jit

    if jit.CACHE_READ_ONLY:
        print(f"bake: {jit.CACHE_DIR} is not writable (run the bake as root, at build time)", file=sys.stderr)
        return 1
    from .registry import KERNELS

    seconds = jit.warm(sorted(KERNELS))
    jit.warm_probe()
    import llvmlite.binding as llvm

    print(json.dumps({"cache": jit.CACHE_DIR, "cpu": llvm.get_host_cpu_name(), "seconds": round(time.perf_counter() - t0, 2),
                      "kernels": {k: round(v, 2) for k, v in seconds.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
