"""Non-blocking admission limits: backpressure without queues that grow or waits that never end.

A call either gets a slot at once or is rejected at once with RESOURCE_EXHAUSTED; the limit can be
changed live (pools.maxQueue) without dropping admitted calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from perfpilot_agent.errors import ResourceExhausted


class Admission:
    """In-flight counter for one class of work (kernel, timings, events)."""

    def __init__(self, name: str, limit: int, *, setting: str) -> None:
        self.name = name
        self.limit = limit
        self.setting = setting
        self.in_flight = 0
        self.rejected = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        if self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block, or raise ResourceExhausted naming the limit."""
        if not self.try_acquire():
            raise ResourceExhausted(
                f"{self.name} queue is full ({self.in_flight} in flight, {self.setting}={self.limit}); retry later"
            )
        try:
            yield
        finally:
            self.release()
