"""`python -m bench.pin CPU -- cmd ...`: pin to one CPU, then exec `cmd`.

Affinity set before exec is inherited by every thread the program creates later (gRPC's C-core
threads included), which setting it from outside after start would miss. Used for rps_one_core:
server on one core, load generator on the other.
"""

from __future__ import annotations

import os
import shutil
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m bench.pin CPU -- cmd [args...]")
    os.sched_setaffinity(0, {int(argv[0])})
    cmd = argv[2:]
    exe = cmd[0] if os.path.sep in cmd[0] else (shutil.which(cmd[0]) or cmd[0])
    os.execv(exe, cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
