"""AgentClient: the synchronous client for apps (threads, WSGI, scripts).

One gRPC channel per client, kept open (warm) for its lifetime. Timings go through a background
thread; config changes arrive through a WatchEvents stream on another background thread, which
reconnects with backoff and re-reads the config after every reconnect so no change is missed.
Callbacks run on that watcher thread: keep them short. Failed calls raise PerfpilotError
subclasses (errors.py), never grpc's; idempotent calls are retried on UNAVAILABLE (channel.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Self, TypeVar

import grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_client.base import (
    ClientBase,
    ConfigCallback,
    ReadyWait,
    invalidate_request,
    invalidated_prefixes,
    put_request,
    require_numpy,
    rpc_name,
    watch_request,
)
from perfpilot_client.config import AgentConfig
from perfpilot_client.errors import PerfpilotError, from_rpc_error
from perfpilot_client.timings import ThreadFlusher

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AgentClient(ClientBase):
    """Synchronous client. `AgentClient.connect()` waits for the sidecar; use as a context manager
    or call close()."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 10.0,
        shm_threshold: int | None = None,
        batch_size: int | None = None,
        batch_wait: float | None = None,
        max_message_bytes: int = 64 << 20,
        near_cache: bool = True,
    ) -> None:
        super().__init__(target, timeout=timeout, shm_threshold=shm_threshold,
                         batch_size=batch_size, batch_wait=batch_wait, max_message_bytes=max_message_bytes,
                         near_cache=near_cache)
        self.channel = grpc.insecure_channel(self.target, options=self.channel_options)
        self.stub = pb_grpc.AgentStub(self.channel)
        self._flusher: ThreadFlusher | None = None
        self.timings.on_first = self.timings.on_full = self._start_flusher
        self._watcher: threading.Thread | None = None
        self._watch_call: grpc.Call | None = None
        self._closed = threading.Event()
        self._watching = threading.Event()  # a subscription is live
        self._attempted = threading.Event()  # the first subscription attempt finished

    @classmethod
    def connect(cls, target: str | None = None, *, wait: float = 10.0, warm: bool = True, **kwargs: Any) -> AgentClient:
        """A client whose sidecar answered within `wait` seconds (see wait_ready), else
        SidecarUnavailable. The first client connected becomes the default for `measure("op")`."""
        client = cls(target, **kwargs)
        try:
            client.wait_ready(wait, warm=warm)
        except BaseException:
            client.close()
            raise
        client._set_default_if_none()
        return client

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush timings, stop the watcher and close the channel."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.close()
        if self._watch_call is not None:
            self._watch_call.cancel()
        if self._watcher is not None:
            self._watcher.join(5)
        self.channel.close()
        self.segment_pool.close()
        self._forget_default()

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, **kwargs: Any) -> Resp:
        """One unary call with the client's deadline; grpc errors become PerfpilotError."""
        try:
            return method(request, timeout=kwargs.pop("timeout", self.timeout), metadata=self.metadata, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, rpc_name(request)) from exc

    # -- plain calls -------------------------------------------------------------------------------

    def heartbeat(self, sequence: int = 0) -> pb.HeartbeatResponse:
        """One Heartbeat."""
        return self._call(self.stub.Heartbeat, pb.HeartbeatRequest(sequence=sequence))

    def stats(self) -> pb.GetStatsResponse:
        """GetStats snapshot."""
        return self._call(self.stub.GetStats, pb.GetStatsRequest())

    def wait_ready(self, timeout: float = 10.0, *, warm: bool = True) -> pb.HeartbeatResponse:
        """Block until the sidecar answers (and, with warm=True, has compiled its warm kernels), at
        most `timeout` seconds; then SidecarUnavailable saying what it saw last."""
        wait = ReadyWait(self.target, timeout, warm)
        while True:
            if self._closed.wait(wait.pause()):
                raise wait.error()
            try:
                resp = self._call(self.stub.Heartbeat, pb.HeartbeatRequest(), wait_for_ready=True, timeout=wait.left())
                if wait.ready(resp):
                    return resp
            except PerfpilotError as exc:
                wait.cause = exc

    # -- cache ---------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None: from L1 when cache.l1 is on and its event stream is live, else
        from the sidecar (then kept in L1)."""
        if self._watcher is None:
            self._start_l1()
        value = self.l1.get(key)
        if value is not None:
            return value
        ticket = self.l1.ticket()
        return self._l1_filled_from_get(key, self._call(self.stub.CacheGet, pb.CacheGetRequest(key=key)), ticket)

    def cache_put(self, key: str, value: bytes, *, ttl: float | None = None, depends_on: Sequence[str] = (),
                  depends_on_prefixes: Sequence[str] = (), tags: Sequence[str] = ()) -> None:
        """Store a value (ttl in seconds; None = the profile's cache.ttl). The entry is dropped, in the
        sidecar and in every L1, when a key in `depends_on` or under `depends_on_prefixes` is written
        or invalidated, or one of its `tags` is invalidated."""
        if self._watcher is None:
            self._start_l1()
        req = put_request(key, value, ttl, depends_on, depends_on_prefixes, tags)
        ticket = self.l1.ticket()
        self._l1_after_put(req, self._call(self.stub.CachePut, req), ticket)

    def cache_invalidate(self, prefix: str = "", *, keys: Sequence[str] = (), tags: Sequence[str] = ()) -> int:
        """Remove entries by key prefix ("" = all, unless keys or tags are given), by exact keys and
        by tags, with everything depending on them; returns how many went."""
        req = invalidate_request(prefix, keys, tags)
        removed = int(self._call(self.stub.CacheInvalidate, req).removed)
        self.l1.discard(prefixes=invalidated_prefixes(req), keys=req.keys, tags=req.tags)
        return removed

    def _start_l1(self) -> None:
        """First cache call: subscribe (the live config says whether L1 is on) and start the flusher
        that reports L1's counters."""
        self._ensure_watcher()
        if self._flusher is None:
            self._start_flusher()

    # -- kernels -------------------------------------------------------------------------------------

    def run_kernel(self, kernel: str, /, *, use_cache: bool = False, **inputs: Any) -> dict[str, Any]:
        """Run a kernel: arrays become inputs, scalars become params; returns NumPy arrays.

        Arrays of at least shm_threshold bytes travel through shared memory on a Unix socket.
        Needs NumPy (`pip install "perfpilot[client-kernels]"`).
        """
        require_numpy()
        from perfpilot_client import tensors

        segments = tensors.Segments(self.segment_pool)
        try:
            req = tensors.build_request(kernel, inputs, use_cache=use_cache,
                                        shm_threshold=self.shm_threshold, segments=segments)
            resp = self._call(self.stub.RunKernel, req)
        finally:
            segments.close()
        return tensors.decode_outputs(resp)

    # -- timings -------------------------------------------------------------------------------------

    def _start_flusher(self) -> None:
        """First observation: start the flusher thread (it then takes over the buffer's signals)."""
        with self._lock:
            if self._flusher is None and not self._closed.is_set():
                self._flusher = ThreadFlusher(self.timings, self._send_timings)
        if self._flusher is not None:
            self._flusher.buffer.on_first()

    def flush(self) -> None:
        """Send buffered timings now (blocking)."""
        if self._flusher is not None:
            self._flusher.flush()

    def _send_timings(self, req: pb.RecordTimingsRequest) -> pb.RecordTimingsResponse:
        return self._call(self.stub.RecordTimings, req)

    # -- live config ---------------------------------------------------------------------------------

    @property
    def config(self) -> AgentConfig:
        """The live config. The first access subscribes to changes; later reads are free.

        While the subscription is down (agent restarting), each access reads the config directly.
        """
        self._ensure_watcher()
        cfg = self._config
        if cfg is None or not self._watching.is_set():
            cfg = self.refresh_config()
        return cfg

    def refresh_config(self) -> AgentConfig:
        """Read the config now (GetConfig); fires callbacks if it changed."""
        r = self._call(self.stub.GetConfig, pb.GetConfigRequest())
        changed = self._adopt(r.generation, r.config)
        if changed is not None:
            self._fire(changed)
        assert self._config is not None
        return self._config

    def on_config_change(self, callback: ConfigCallback) -> None:
        """Call `callback(config)` on the watcher thread whenever a newer config is applied."""
        self._callbacks.append(callback)
        self._ensure_watcher()

    def _fire(self, cfg: AgentConfig) -> None:
        for cb in list(self._callbacks):
            try:
                cb(cfg)
            except Exception:  # a broken callback must not stop the watcher
                log.exception("config change callback failed")

    def _ensure_watcher(self) -> None:
        if self._watcher is not None:
            return
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(target=self._watch, name="perfpilot-config", daemon=True)
            self._watcher.start()
        self._attempted.wait(self.timeout)  # subscribed (or failed once): no change is missed after this

    def _watch(self) -> None:
        backoff = 0.1
        while not self._closed.is_set():
            try:
                cache_events = self._wants_cache_events()
                call = self.stub.WatchEvents(watch_request(cache_events), metadata=self.metadata)
                self._watch_call = call
                first, switched = True, False
                for batch in call:
                    if first:  # subscribed: now read the config so nothing between is missed
                        first = False
                        self.refresh_config()
                        self.l1.subscribed(cache_events=cache_events)
                        self._watching.set()
                        self._attempted.set()
                        backoff = 0.1
                    self.l1.on_batch(batch)
                    for ev in batch.events:
                        if ev.type == pb.EVENT_TYPE_CONFIG_APPLIED:
                            changed = self._adopt(ev.generation, ev.config)
                            if changed is not None:
                                self._fire(changed)
                    if self.l1.wanted() != cache_events:
                        switched = True
                        break
                self._watching.clear()
                if switched:  # L1 turned on or off: resubscribe at once, with(out) the cache events
                    call.cancel()
                    self.l1.lost(count=False)
                    continue
                self.l1.lost()  # the agent ended the stream (draining)
            except (grpc.RpcError, PerfpilotError) as exc:
                self._watching.clear()
                self.l1.lost()
                self._attempted.set()
                if self._closed.is_set() or (isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.CANCELLED):
                    return
                log.debug("config watch interrupted: %s", exc)
            if self._closed.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    # -- events --------------------------------------------------------------------------------------

    def watch_events(
        self, types: Sequence[pb.EventType.ValueType] = (), *, since: int = 0, max_batch: int = 0
    ) -> Iterator[pb.EventBatch]:
        """Raw WatchEvents stream (the first batch arrives at once and may be empty); closing the
        iterator cancels the call."""
        req = pb.WatchEventsRequest(types=list(types), since_sequence=since, max_batch=max_batch)
        call = self.stub.WatchEvents(req, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "WatchEvents") from exc
        finally:
            call.cancel()
