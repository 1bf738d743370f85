"""Pure helpers shared by the benchmark modules: percentiles, result entries, free ports.

No gRPC or NumPy imports here, so the unit test (tests/bench) and every benchmark process can use
these without paying for heavy imports.
"""

from __future__ import annotations

import math
import socket
import statistics
from collections.abc import Sequence
from typing import Any

Entry = dict[str, Any]
"""One figure: {"value", "unit", "baseline", "ratio", "note"}; ratio = value / baseline."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank q-quantile (0 < q <= 1) of `values`: the smallest sample with at least q·n samples <= it.

    Nearest-rank (not interpolation) so a reported p99 is a latency that really happened. NaN when
    there are no samples.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    """statistics.median, NaN for no samples."""
    return float(statistics.median(values)) if values else math.nan


def _round(x: float, digits: int = 4) -> float:
    if not math.isfinite(x):
        return x
    if x == 0:
        return 0.0
    # keep 4 significant digits for small numbers, 4 decimals for large ones
    magnitude = math.floor(math.log10(abs(x)))
    return round(x, max(digits, digits - 1 - magnitude))


def entry(value: float, unit: str, baseline: float, note: str) -> Entry:
    """A result entry with ratio = value / baseline (NaN when the baseline is 0 or missing)."""
    ratio = value / baseline if baseline and math.isfinite(baseline) else math.nan
    return {"value": _round(value), "unit": unit, "baseline": _round(baseline), "ratio": _round(ratio), "note": note}


def failed_entry(unit: str, note: str) -> Entry:
    """Placeholder when a benchmark could not run: the key stays present and the note says why."""
    return {"value": math.nan, "unit": unit, "baseline": math.nan, "ratio": math.nan, "note": f"NOT MEASURED: {note}"}


def cpu_pressure_us() -> int | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI, /proc/pressure/cpu), or None.

    The direct measure of contention from other processes: the difference over a window divided by
    the window is the fraction of time the CPUs were oversubscribed.
    """
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_pressure_text() -> str:
    """PSI 'some' averages as 'avg10/avg60/avg300 %', or 'n/a'."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        vals = dict(kv.split("=") for kv in some[1:])
        return f"{vals['avg10']}/{vals['avg60']}/{vals['avg300']} %"
    except (OSError, ValueError, KeyError):
        return "n/a"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | str = "self") -> float:
    """VmRSS of a process (this one by default) in MB; NaN when the kernel does not say."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan
