"""AgentClient: the synchronous client for apps (threads, WSGI, scripts).

One gRPC channel per client, kept open (warm) for its lifetime. Timings go through a background
thread; config changes arrive through a WatchEvents stream on another background thread, which
reconnects with backoff and re-reads the config after every reconnect so no change is missed.
Callbacks run on that watcher thread: keep them short.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_client import tensors
from perfpilot_client.config import AgentConfig, Pools, is_local, normalize_target
from perfpilot_client.measure import Measure, ThreadFlusher, TimingBuffer

log = logging.getLogger(__name__)
ConfigCallback = Callable[[AgentConfig], None]
DEFAULT_SHM_THRESHOLD = 1 << 20


class _Base:
    """Target/token handling shared by the sync and async clients."""

    def __init__(
        self,
        target: str | None,
        *,
        token: str | None,
        timeout: float,
        shm_threshold: int | None,
        batch_size: int | None,
        batch_wait: float | None,
        max_message_bytes: int,
    ) -> None:
        self.target = normalize_target(target)
        token = token if token is not None else os.environ.get("PERFPILOT_TOKEN") or None
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        if shm_threshold is None and is_local(self.target):
            shm_threshold = DEFAULT_SHM_THRESHOLD
        self.shm_threshold = shm_threshold if is_local(self.target) else None
        defaults = Pools()  # the contract's defaults until the live config arrives
        self.timings = TimingBuffer(batch_size=batch_size or defaults.batch_size,
                                    batch_wait=defaults.batch_wait if batch_wait is None else batch_wait)
        self.segment_pool = tensors.SegmentPool()
        self._batch_fixed = batch_size is not None, batch_wait is not None
        self.channel_options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._config: AgentConfig | None = None
        self._callbacks: list[ConfigCallback] = []
        self._lock = threading.Lock()

    def _adopt(self, generation: int, msg: pb.AgentConfig) -> AgentConfig | None:
        """Store a config if newer; returns it when it changed (callbacks are then due)."""
        cfg = AgentConfig.from_proto(generation, msg)
        with self._lock:
            old = self._config
            if old is not None and generation < old.generation:
                return None
            self._config = cfg
        if not self._batch_fixed[0]:
            self.timings.batch_size = cfg.pools.batch_size
        if not self._batch_fixed[1]:
            self.timings.batch_wait = cfg.pools.batch_wait
        return cfg if old is not None and old != cfg else None  # the first load is not a change

    def _fire(self, cfg: AgentConfig) -> None:
        for cb in list(self._callbacks):
            try:
                cb(cfg)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the watcher
                log.exception("config change callback failed")


class AgentClient(_Base):
    """Synchronous client. Use as a context manager or call close()."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        shm_threshold: int | None = None,
        batch_size: int | None = None,
        batch_wait: float | None = None,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        super().__init__(target, token=token, timeout=timeout, shm_threshold=shm_threshold,
                         batch_size=batch_size, batch_wait=batch_wait, max_message_bytes=max_message_bytes)
        self.channel = grpc.insecure_channel(self.target, options=self.channel_options)
        self.stub = pb_grpc.AgentStub(self.channel)
        self._flusher: ThreadFlusher | None = None
        self._watcher: threading.Thread | None = None
        self._watch_call: Any = None
        self._closed = threading.Event()
        self._watching = threading.Event()  # a subscription is live
        self._attempted = threading.Event()  # the first subscription attempt finished

    def __enter__(self) -> AgentClient:
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

    # -- plain calls -------------------------------------------------------------------------------

    def heartbeat(self, sequence: int = 0) -> pb.HeartbeatResponse:
        """One Heartbeat."""
        return self.stub.Heartbeat(pb.HeartbeatRequest(sequence=sequence), timeout=self.timeout, metadata=self.metadata)

    def stats(self) -> pb.GetStatsResponse:
        """GetStats snapshot."""
        return self.stub.GetStats(pb.GetStatsRequest(), timeout=self.timeout, metadata=self.metadata)

    def configure(self, generation: int, config: pb.AgentConfig) -> pb.ConfigureResponse:
        """Push a config (the operator's job; useful for tools and tests)."""
        return self.stub.Configure(pb.ConfigureRequest(generation=generation, config=config),
                                   timeout=self.timeout, metadata=self.metadata)

    def wait_for_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (the agent may still be warming kernels)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- cache ---------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None."""
        r = self.stub.CacheGet(pb.CacheGetRequest(key=key), timeout=self.timeout, metadata=self.metadata)
        return r.value if r.found else None

    def cache_put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store a value (ttl in seconds; None = the profile's cache.ttl)."""
        req = pb.CachePutRequest(key=key, value=value)
        if ttl is not None:
            req.ttl.FromNanoseconds(int(ttl * 1e9))
        self.stub.CachePut(req, timeout=self.timeout, metadata=self.metadata)

    def cache_invalidate(self, prefix: str = "") -> int:
        """Remove entries by key prefix; returns how many went."""
        r = self.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix=prefix), timeout=self.timeout, metadata=self.metadata)
        return int(r.removed)

    # -- kernels -------------------------------------------------------------------------------------

    def run_kernel(self, kernel: str, /, *, use_cache: bool = False, **inputs: Any) -> dict[str, Any]:
        """Run a kernel: arrays become inputs, scalars become params; returns NumPy arrays.

        Arrays of at least shm_threshold bytes travel through shared memory on a Unix socket.
        """
        segments = tensors.Segments(self.segment_pool)
        try:
            req = tensors.build_request(kernel, inputs, use_cache=use_cache,
                                        shm_threshold=self.shm_threshold, segments=segments)
            resp = self.stub.RunKernel(req, timeout=self.timeout, metadata=self.metadata)
        finally:
            segments.close()
        return tensors.decode_outputs(resp)

    # -- timings -------------------------------------------------------------------------------------

    def measure(self, op: str) -> Measure:
        """`with agent.measure("op"):` times the block; batches go to RecordTimings in the background."""
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = ThreadFlusher(self.timings, self._send_timings)
        return Measure(self.timings, op)

    def flush(self) -> None:
        """Send buffered timings now (blocking)."""
        if self._flusher is not None:
            self._flusher.flush()

    def _send_timings(self, req: pb.RecordTimingsRequest) -> None:
        self.stub.RecordTimings(req, timeout=self.timeout, metadata=self.metadata)

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
        r = self.stub.GetConfig(pb.GetConfigRequest(), timeout=self.timeout, metadata=self.metadata)
        changed = self._adopt(r.generation, r.config)
        if changed is not None:
            self._fire(changed)
        assert self._config is not None
        return self._config

    def on_config_change(self, callback: ConfigCallback) -> None:
        """Call `callback(config)` on the watcher thread whenever a newer config is applied."""
        self._callbacks.append(callback)
        self._ensure_watcher()

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
                call = self.stub.WatchEvents(pb.WatchEventsRequest(types=[pb.EVENT_TYPE_CONFIG_APPLIED]),
                                             metadata=self.metadata)
                self._watch_call = call
                first = True
                for batch in call:
                    if first:  # subscribed: now read the config so nothing between is missed
                        first = False
                        self.refresh_config()
                        self._watching.set()
                        self._attempted.set()
                        backoff = 0.1
                    for ev in batch.events:
                        changed = self._adopt(ev.generation, ev.config)
                        if changed is not None:
                            self._fire(changed)
                self._watching.clear()  # the agent ended the stream (draining)
            except grpc.RpcError as exc:
                self._watching.clear()
                self._attempted.set()
                if self._closed.is_set() or exc.code() == grpc.StatusCode.CANCELLED:
                    return
                log.debug("config watch interrupted: %s", exc)
            if self._closed.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    # -- events --------------------------------------------------------------------------------------

    def watch_events(
        self, types: Sequence[int] = (), *, since: int = 0, max_batch: int = 0
    ) -> Iterator[pb.EventBatch]:
        """Raw WatchEvents stream (the first batch arrives at once and may be empty)."""
        req = pb.WatchEventsRequest(types=list(types), since_sequence=since, max_batch=max_batch)  # type: ignore[arg-type]
        return self.stub.WatchEvents(req, metadata=self.metadata)

