"""Event fan-out for WatchEvents: batched, bounded, never blocking the publisher.

Each event becomes one `pb.Event` at publish time, shared by every subscriber. Each subscriber has
a bounded deque: when a slow reader lets it fill, the oldest events are dropped and counted, and
the next batch reports `dropped`. Publishing is a few deque appends, so the server never waits for
a reader. A small ring of recent events lets a reconnecting watcher replay what it missed.
Publish only from the event loop thread (use `publish_threadsafe` elsewhere).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping

from perfpilot.v1 import agent_pb2 as pb


class Subscription:
    """One watcher's bounded buffer."""

    def __init__(self, bus: EventBus, types: frozenset[int], capacity: int) -> None:
        self._bus = bus
        self.types = types
        self.buffer: deque[pb.Event] = deque(maxlen=capacity)
        self.dropped = 0
        self.closed = False
        self._wake = asyncio.Event()

    def push(self, event: pb.Event) -> None:
        """Append (dropping the oldest when full) and wake the reader."""
        if self.types and event.type not in self.types:
            return
        buf = self.buffer
        if len(buf) == buf.maxlen:
            self.dropped += 1
            self._bus.dropped_total += 1
        buf.append(event)
        self._wake.set()

    async def next_batch(self, max_batch: int) -> tuple[list[pb.Event], int] | None:
        """Wait for events; return up to max_batch of them and the dropped count, or None when closed."""
        while not self.buffer:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        buf = self.buffer
        n = min(max_batch, len(buf))
        events = [buf.popleft() for _ in range(n)]
        dropped, self.dropped = self.dropped, 0
        return events, dropped

    def take_now(self, max_batch: int) -> tuple[list[pb.Event], int]:
        """What is buffered right now (possibly nothing), without waiting."""
        buf = self.buffer
        events = [buf.popleft() for _ in range(min(max_batch, len(buf)))]
        dropped, self.dropped = self.dropped, 0
        return events, dropped

    def close(self) -> None:
        """End the stream after the buffered events are delivered."""
        self.closed = True
        self._wake.set()
        self._bus.unsubscribe(self)


class EventBus:
    """Publisher side: sequence numbers, retention ring, subscriber set."""

    def __init__(self, *, retain: int = 1024, subscriber_capacity: int = 10_000) -> None:
        self.sequence = 0
        self.generation = 0
        self.subscriber_capacity = subscriber_capacity
        self.recent: deque[pb.Event] = deque(maxlen=retain)
        self.subscribers: set[Subscription] = set()
        self.published: dict[int, int] = {}
        self.dropped_total = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(
        self,
        type_: int,
        message: str,
        attributes: Mapping[str, str] | None = None,
        *,
        config: pb.AgentConfig | None = None,
        cache: pb.CacheChange | None = None,
    ) -> pb.Event:
        """Publish one event to every subscriber (O(subscribers), never blocks)."""
        self.sequence += 1
        event = pb.Event(
            sequence=self.sequence,
            time_unix_nano=time.time_ns(),
            type=type_,  # type: ignore[arg-type]
            message=message,
            attributes=attributes,
            config=config,
            generation=self.generation,
            cache=cache,
        )
        self.recent.append(event)
        self.published[type_] = self.published.get(type_, 0) + 1
        for sub in self.subscribers:
            sub.push(event)
        return event

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop publish_threadsafe hops onto."""
        self._loop = loop

    def publish_threadsafe(self, type_: int, message: str, attributes: Mapping[str, str] | None = None) -> None:
        """Publish from another thread by hopping onto the loop."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.publish, type_, message, attributes)

    def subscribe(self, types: Iterable[int] = (), *, since: int = 0, capacity: int | None = None) -> Subscription:
        """New subscription; retained events with sequence > since (and matching types) are queued first."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscription(self, frozenset(types), capacity or self.subscriber_capacity)
        if since:
            for event in self.recent:
                if event.sequence > since:
                    sub.push(event)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription (idempotent)."""
        self.subscribers.discard(sub)

    def close_all(self) -> None:
        """End every stream (on shutdown)."""
        for sub in list(self.subscribers):
            sub.close()
