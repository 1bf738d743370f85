"""Non-blocking process samples for Heartbeat, GetStats and /metrics.

psutil.Process handles are created once (for the agent) or when the worker pid set changes, and
`cpu_percent(interval=None)` never sleeps: it reports usage since the previous call. A sample is
reused for `min_interval` seconds because CPU percent over a few microseconds is noise, and reading
/proc for every call would waste the sub-millisecond Heartbeat budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class ProcSample:
    """One process at one instant."""

    pid: int
    cpu_percent: float
    rss_bytes: int
    alive: bool


@dataclass(frozen=True)
class Sample:
    """The agent and its workers, taken at `taken_at` (monotonic clock)."""

    agent: ProcSample
    workers: tuple[ProcSample, ...]
    taken_at: float

    @property
    def cpu_percent(self) -> float:
        """Agent plus workers (100 = one core)."""
        return self.agent.cpu_percent + sum(w.cpu_percent for w in self.workers)

    @property
    def rss_bytes(self) -> int:
        """Agent plus workers."""
        return self.agent.rss_bytes + sum(w.rss_bytes for w in self.workers)


def _read(proc: psutil.Process) -> ProcSample:
    try:
        with proc.oneshot():
            return ProcSample(proc.pid, proc.cpu_percent(interval=None), proc.memory_info().rss, True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, OSError):
        return ProcSample(proc.pid, 0.0, 0, False)


class ProcessSampler:
    """Caches psutil handles and the latest sample."""

    def __init__(self, *, min_interval: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self._agent = psutil.Process()
        self._agent.cpu_percent(interval=None)  # prime: the first call always returns 0.0
        self._workers: dict[int, psutil.Process] = {}
        self._pids: tuple[int, ...] = ()
        self._last: Sample | None = None
        self.cpu_count = psutil.cpu_count() or 1

    def set_workers(self, pids: Sequence[int]) -> None:
        """Track exactly these worker pids (cheap when unchanged)."""
        key = tuple(pids)
        if key == self._pids:
            return
        fresh: dict[int, psutil.Process] = {}
        for pid in key:
            proc = self._workers.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                    proc.cpu_percent(interval=None)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            fresh[pid] = proc
        self._workers = fresh
        self._pids = key
        self._last = None

    def sample(self) -> Sample:
        """The latest sample, refreshed when older than min_interval."""
        now = self.clock()
        last = self._last
        if last is not None and now - last.taken_at < self.min_interval:
            return last
        last = Sample(_read(self._agent), tuple(_read(p) for p in self._workers.values()), now)
        self._last = last
        return last
