"""How many CPUs this process may really use (affinity and cgroup quota), without numba."""

from __future__ import annotations

import math
import os


def available_cpus() -> int:
    """CPUs usable by this process: min(affinity mask, cgroup v2/v1 CPU quota), at least 1.

    ``PERFPILOT_CPUS`` overrides the detection (useful when the quota is not visible).
    """
    env = os.environ.get("PERFPILOT_CPUS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, p = f.read().split()[:2]
        if q != "max":
            return int(q) / int(p)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            q1 = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            p1 = int(f.read())
        if q1 > 0 and p1 > 0:
            return q1 / p1
    except (OSError, ValueError):
        pass
    return None
