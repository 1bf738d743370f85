"""The shared cache tier: a Redis/Valkey behind the sidecar's own cache, shared by every replica.

* Read: a local miss asks Redis (GET + PTTL in one round trip, bounded by cache.shared.timeout);
  a hit fills the local cache with Redis's remaining TTL. Down or slow: a miss, never an error.
* Write: CachePut stores locally, then queues SET PX <the entry's TTL> + PUBLISH <key> for one
  writer task, so Redis never adds latency to a put. The queue is bounded (maxPendingWrites).
* Invalidate: a local invalidation (keys, prefixes, tags; the cache's subscribe hook) deletes the
  keys and prefixes in Redis (UNLINK, SCAN + UNLINK), then PUBLISHes all of it; every other replica
  drops the same from its own cache, cascading through its own dependency index, which reaches its
  apps' L1s as CACHE_CHANGED. Delete first, publish second: a replica that re-reads after the
  message finds nothing stale. Entries with dependencies are never written to Redis (Redis keeps no
  dependency index), so deleting what was named is complete there.
* Outage: a connection error marks the tier down. Reads are skipped; writes and invalidations are
  journaled as keys/prefixes to invalidate (bounded; beyond it: everything under the key prefix).
  A supervisor reconnects with capped exponential backoff, replays the journal (delete + publish)
  and then, because its subscriber may have missed other replicas' messages, drops its own local
  entries ("resync", announced as CACHE_CLEARED) before shared reads resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from perfpilot_agent.runtime import sharedtls
from perfpilot_agent.runtime.sharedstats import SharedCounters, SharedView
from perfpilot_contract.sharedcache import SharedCache

log = logging.getLogger(__name__)
JOURNAL_MAX = 10_000
"""Keys/prefixes remembered for invalidation after an outage; beyond it the whole key prefix goes."""
READ_SLOTS = 16
"""Concurrent shared reads (each waits for a slot within cache.shared.timeout)."""
READ_FAILURES_DOWN = 3
"""Consecutive failed reads that take the tier down (a partition gives timeouts, not resets)."""
KEY_SEQ_MAX = 100_000
"""Recently invalidated keys remembered to keep an in-flight read from refilling them."""
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
ORIGIN_LEN = 16
Op = tuple[str, str, bytes, float]
"""("set", key, value, ttl seconds) | ("del", key, b"", 0) | ("prefix", prefix, b"", 0) | ("tag", tag, b"", 0)."""
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def default_prefix(profile: str) -> str:
    """perfpilot:<namespace>/<profile>: -- the replicas of one profile share entries."""
    return f"perfpilot:{profile or 'default'}:"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class SharedTier:
    """One configured tier: connections, writer, subscriber and supervisor tasks."""

    def __init__(self, cfg: SharedCache, *, prefix: str, password: str | None, ca: str | None = None,
                 apply_remote: Callable[[str, str], None], resync: Callable[[], int],
                 client_name: str = "perfpilot-sidecar") -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.channel = f"{prefix}invalidations"
        self.password = password
        self.ca = ca
        """PEM from tls.caSecret (CA_ENV): trusted besides the system CAs."""
        self.client_name = client_name[:64]
        self.apply_remote = apply_remote
        self.resync = resync
        self.origin = os.urandom(ORIGIN_LEN // 2).hex().encode()
        self.counters = SharedCounters()
        self.up = False
        self.last_error = ""
        self.down_since_ns = time.time_ns()
        self._ops: deque[Op] = deque()
        self._journal: set[tuple[str, str]] = set()
        self._journal_all = False
        self._in_flight: list[Op] = []
        """The batch being sent: journaled again when sending fails (it may not have landed)."""
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._read_failures = 0
        self._failed = asyncio.Event()
        self._read_slots = asyncio.Semaphore(READ_SLOTS)
        self._seq = 0
        self._prefix_seq = 0
        self._key_seq: dict[str, int] = {}
        self._redis: Redis | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._connected_before = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor (connect, subscribe, reconnect) and the writer."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise(), name="shared-cache-supervisor"),
                       loop.create_task(self._writer(), name="shared-cache-writer")]

    async def close(self) -> None:
        """Stop the tasks and close the connections (pending writes are dropped)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.up = False
        await self._disconnect()

    def view(self) -> SharedView:
        """Counters and state for the snapshot (copied: scrapes run on another thread)."""
        return SharedView(configured=True, up=self.up, counters=replace(self.counters),
                          last_error=self.last_error, down_since_unix_nano=0 if self.up else self.down_since_ns,
                          pending=len(self._ops) + len(self._journal) + int(self._journal_all) + len(self._in_flight))

    # -- reads ---------------------------------------------------------------------------------

    def read_token(self) -> int:
        """Taken before a read; may_fill(key, token) says whether its result may enter the local cache."""
        return self._seq

    def may_fill(self, key: str, token: int) -> bool:
        """False when an invalidation of this key (or of a prefix) arrived while the read was in flight."""
        return self._prefix_seq <= token and self._key_seq.get(key, 0) <= token

    async def get(self, key: str) -> tuple[bytes, float | None] | None:
        """(value, seconds left or None for no expiry) from Redis, or None: a miss, down or slow."""
        redis = self._redis
        if not self.up or redis is None:
            self.counters.skipped += 1
            return None
        k = self.prefix + key
        try:
            async with asyncio.timeout(self.cfg.timeout), self._read_slots:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.get(k)
                    pipe.pttl(k)
                    value, pttl = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._read_failures += 1  # a few in a row: the server is unreachable, not just slow once
            self._error(exc, fatal=self._read_failures >= READ_FAILURES_DOWN)
            return None
        self._read_failures = 0
        if value is None or pttl == -2:
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        return bytes(value), (pttl / 1000 if pttl > 0 else None)

    # -- writes and invalidations (never block, never raise) -------------------------------------

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Write through with the entry's TTL (ttl <= 0: the key is deleted, as locally)."""
        self._enqueue(("set", key, value, ttl) if ttl > 0 else ("del", key, b"", 0.0))

    def invalidate(self, keys: Iterable[str] = (), prefixes: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        """Delete keys and prefixes in Redis ("" = every key of this tier) and tell the other replicas,
        tags included (they drop what they tagged, and every replica its own dependents)."""
        self._mark_prefix()
        for key in keys:
            self._enqueue(("del", key, b"", 0.0))
        for prefix in prefixes:
            self._enqueue(("prefix", prefix, b"", 0.0))
        for tag in tags:
            self._enqueue(("tag", tag, b"", 0.0))

    def _enqueue(self, op: Op) -> None:
        if not self.up or len(self._ops) >= self.cfg.max_pending_writes:
            if op[0] == "set":
                self.counters.writes_dropped += 1
            self._journal_add(op)
        else:
            self._ops.append(op)
        self._wake.set()

    def _journal_add(self, op: Op) -> None:
        if self._journal_all:
            return
        kind = {"prefix": "p", "tag": "t"}.get(op[0], "k")
        if (kind == "p" and op[1] == "") or len(self._journal) >= JOURNAL_MAX:
            self._journal_all, self._journal = True, set()
        else:
            self._journal.add((kind, op[1]))

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.up and (self._ops or self._journal or self._journal_all):
                try:
                    async with self._send_lock:  # recovery replays the journal under it too
                        await self._replay_journal()
                        await self._send([self._ops.popleft() for _ in range(min(len(self._ops), 256))])
                except (RedisError, OSError, TimeoutError) as exc:
                    self._rejournal()
                    # a refused command (OOM, ACL) is not an outage; anything else is
                    self._error(exc, fatal=not isinstance(exc, ResponseError))
                    if isinstance(exc, ResponseError):
                        await asyncio.sleep(BACKOFF_FIRST)

    async def _send(self, batch: list[Op]) -> None:
        redis = self._redis
        assert redis is not None
        self._in_flight = batch
        i = 0
        while i < len(batch):
            kind, target, value, ttl = batch[i]
            if kind in ("prefix", "tag"):
                if kind == "prefix":
                    await self._delete_prefix(target)
                await redis.publish(self.channel, self._message(b"p" if kind == "prefix" else b"t", target))
                self.counters.invalidations_sent += 1
                i += 1
                continue
            async with redis.pipeline(transaction=False) as pipe:
                while i < len(batch) and batch[i][0] not in ("prefix", "tag"):
                    kind, target, value, ttl = batch[i]
                    if kind == "set":
                        pipe.set(self.prefix + target, value, px=max(1, int(ttl * 1000)))
                        self.counters.writes += 1
                    else:
                        pipe.unlink(self.prefix + target)
                    pipe.publish(self.channel, self._message(b"k", target))
                    self.counters.invalidations_sent += 1
                    i += 1
                await pipe.execute()
        self._in_flight = []

    def _rejournal(self) -> None:
        """The batch that failed may not have landed: invalidate its keys everywhere later."""
        for op in self._in_flight:
            self._journal_add(op)
        self._in_flight = []

    async def _delete_prefix(self, prefix: str) -> None:
        redis = self._redis
        assert redis is not None
        chunk: list[bytes] = []
        async for key in redis.scan_iter(match=(self.prefix + prefix).translate(_GLOB) + "*", count=1000):
            chunk.append(key)
            if len(chunk) >= 500:
                await redis.unlink(*chunk)
                chunk = []
        if chunk:
            await redis.unlink(*chunk)

    async def _replay_journal(self) -> None:
        """What could not be sent (outage, full queue) is invalidated in Redis and everywhere."""
        if self._journal_all:
            self._journal_all = False
            self._journal.clear()
            await self._send([("prefix", "", b"", 0.0)])
        while self._journal:
            entries = [self._journal.pop() for _ in range(min(len(self._journal), 256))]
            await self._send([({"p": "prefix", "t": "tag"}.get(kind, "del"), target, b"", 0.0) for kind, target in entries])

    def _message(self, kind: bytes, target: str) -> bytes:
        return self.origin + kind + target.encode()

    # -- the invalidation channel ------------------------------------------------------------------

    def on_message(self, data: Any) -> None:
        """One message from the channel: another replica's key write/invalidation, prefix or tag."""
        if not isinstance(data, bytes) or len(data) < ORIGIN_LEN + 1 or data[:ORIGIN_LEN] == self.origin:
            return
        kind = data[ORIGIN_LEN:ORIGIN_LEN + 1]
        try:
            target = data[ORIGIN_LEN + 1:].decode()
        except UnicodeDecodeError:
            self.counters.errors += 1
            return
        if kind == b"k":
            self._mark_key(target)
            self.apply_remote("key", target)
        elif kind in (b"p", b"t"):
            self._mark_prefix()
            self.apply_remote("prefix" if kind == b"p" else "tag", target)
        else:
            self.counters.errors += 1
            return
        self.counters.invalidations_received += 1

    def _mark_key(self, key: str) -> None:
        self._seq += 1
        if len(self._key_seq) >= KEY_SEQ_MAX:
            self._key_seq.clear()
            self._prefix_seq = self._seq
        self._key_seq[key] = self._seq

    def _mark_prefix(self) -> None:
        self._seq += 1
        self._prefix_seq = self._seq

    # -- connection, outage and recovery ------------------------------------------------------------

    def _error(self, exc: BaseException, *, fatal: bool = False) -> None:
        """Count it; a lost connection (or a failed write) takes the tier down until the supervisor
        has reconnected and resynchronised. A slow read is only a miss."""
        self.counters.errors += 1
        self.last_error = _describe(exc)
        for field, ref, value in (("credentialsSecret", self.cfg.credentials, self.password),
                                  ("tls.caSecret", self.cfg.ca_secret, self.ca)):
            if ref is not None and not value:
                self.last_error += (f" (cache.shared.{field} {ref.name}/{ref.key} is not in this sidecar's "
                                    "environment: the Secret or key is missing, or the pod started before the "
                                    "setting; restart it)")
        if (fatal or isinstance(exc, (RedisConnectionError, OSError))) and self.up:
            self.up = False
            self.down_since_ns = time.time_ns()
            log.warning("shared cache tier down: %s", self.last_error)
            self._failed.set()

    async def _connect(self) -> None:
        tls, host, port, db = self.cfg.endpoint()
        kwargs: dict[str, Any] = dict(
            host=host, port=port, db=db, username=self.cfg.username or None, password=self.password,
            socket_timeout=max(1.0, self.cfg.timeout), socket_connect_timeout=self.cfg.timeout,
            retry=Retry(NoBackoff(), 0), max_connections=READ_SLOTS + 2, client_name=self.client_name)
        if tls:  # rediss://: one verifying context (system CAs + tls.caSecret's), built once off the loop
            if self._tls_context is None:
                self._tls_context = await asyncio.to_thread(sharedtls.context, self.ca, self.cfg.ca_secret)
            self._redis = Redis.from_pool(ConnectionPool(
                connection_class=sharedtls.SharedContextConnection, tls_context=self._tls_context, **kwargs))
        else:
            self._redis = Redis(**kwargs)
        await self._redis.ping()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)

    async def _disconnect(self) -> None:
        pubsub, redis, self._pubsub, self._redis = self._pubsub, self._redis, None, None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            if redis is not None:
                await redis.aclose()

    async def _recover(self) -> None:
        """Connected: replay what this replica could not send, then drop what it may have missed."""
        async with self._send_lock:
            await self._replay_journal()
        self._mark_prefix()
        removed = self.resync()
        if self._connected_before:
            self.counters.resyncs += 1
        self._connected_before = True
        self.up = True
        self._failed.clear()
        self._wake.set()
        log.info("shared cache tier up (%s, prefix %r); %d local entries dropped to resync",
                 self.cfg.url, self.prefix, removed)

    async def _listen(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while True:
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except TimeoutError:  # a quiet channel on a busy machine, not an outage (a lost
                continue          # connection raises ConnectionError; reads and writes notice too)
            if msg is not None and msg.get("type") == "message":
                self.on_message(msg.get("data"))

    async def _supervise(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                await self._recover()
                delay = BACKOFF_FIRST
                listen = asyncio.ensure_future(self._listen())
                failed = asyncio.ensure_future(self._failed.wait())
                try:
                    await asyncio.wait((listen, failed), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    failed.cancel()
                    listen.cancel()
                    await asyncio.gather(listen, failed, return_exceptions=True)
                if listen.done() and not listen.cancelled() and listen.exception() is not None:
                    raise listen.exception()  # type: ignore[misc]
            except (RedisError, OSError, TimeoutError) as exc:
                self._rejournal()
                self._error(exc, fatal=True)
            except Exception as exc:  # noqa: BLE001 - the tier must outlive any surprise; logged
                log.exception("shared cache tier supervisor")
                self._error(exc, fatal=True)
            self.up = False
            await self._disconnect()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_CAP)
