"""AgentApp: wires the runtime to three gRPC servers, /metrics and the health service.

Three grpc.aio servers over the same app, each with its own rule (server/auth.py): the Unix socket (the
app container) serves every data call but refuses Configure; the TCP control port (the operator) is
mutual TLS and checks the client certificate's name before parsing, and its Configure wins over
generation order; the plaintext health port serves only Heartbeat and grpc.health.v1 for the kubelet's
probes. All three have the decode guard (bytes that do not parse -> INVALID_ARGUMENT). Separate servers
let the trust decision depend on the listener rather than on parsing peer strings.
Lifecycle: start() binds and returns; readiness follows warm-up; stop() drains and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_agent import __version__
from perfpilot_agent.config import Settings
from perfpilot_agent.errors import InvalidArgument
from perfpilot_agent.liveconfig import LiveConfig, merge_proto, proto_from_dict, to_proto
from perfpilot_agent.metrics.collectors import AgentCollector
from perfpilot_agent.metrics.definitions import MetricsServer
from perfpilot_agent.runtime.admission import Admission
from perfpilot_agent.runtime.cache import Change, TTLCache, change_message
from perfpilot_agent.runtime.compute import KernelRunner, PoolFactory, load_registry
from perfpilot_agent.runtime.heartbeat import ProcessSampler, Sample
from perfpilot_agent.runtime.monitor import Monitor, RpcStats
from perfpilot_agent.runtime.sharedslot import SharedSlot
from perfpilot_agent.runtime.snapshot import PoolView, Snapshot
from perfpilot_agent.server.agent import AgentServicer
from perfpilot_agent.server.auth import ClientCertInterceptor, Refusals, health_policy, socket_policy
from perfpilot_agent.server.decoding import DecodeGuard, DecodeInterceptor
from perfpilot_agent.runtime.events import EventBus
from perfpilot_agent.server.health import Health
from perfpilot_agent.server.tls import load_ca, server_credentials

log = logging.getLogger("perfpilot_agent")


class AgentApp:
    """The whole agent in one object (tests build it in-process; __main__ runs it until SIGTERM)."""

    version = __version__

    def __init__(
        self,
        settings: Settings,
        *,
        pool_factory: PoolFactory | None = None,
        registry_loader: Callable[[], Any | None] = load_registry,
        clock: Callable[[], float] = time.monotonic,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = clock()
        self.config = LiveConfig()
        self.generation = 0
        self.state = pb.AGENT_STATE_STARTING
        self.events = EventBus(subscriber_capacity=settings.event_buffer)
        self.cache = TTLCache(max_entries=self.config.cache.max_entries, ttl=self.config.cache.ttl,
                              max_bytes=settings.cache_max_bytes, clock=clock)
        self.cache.subscribe(self._publish_cache_change)
        self.shared = SharedSlot(self.cache, profile=settings.profile,
                                 password=settings.cache_shared_password, ca=settings.cache_shared_ca,
                                 client_name=f"perfpilot:{settings.pod_name or os.getpid()}")
        self.monitor = Monitor(max_ops=settings.max_ops)
        self.rpc_stats = RpcStats()
        self.sampler = ProcessSampler(min_interval=settings.heartbeat_sample_interval)
        self.watchers = Admission("events", settings.max_watchers, setting="--max-watchers")
        self.runner = KernelRunner(settings=settings, config=lambda: self.config, cache=self.cache,
                                   monitor=self.monitor, events=self.events, pool_factory=pool_factory,
                                   registry_loader=registry_loader)
        self.health = Health()
        self.auth = Refusals()
        self.servicer = AgentServicer(self)
        # The control port's callers proved the operator's certificate: their Configure wins.
        self.control_servicer = AgentServicer(self, operator=True)
        self.malformed = DecodeGuard(self.rpc_stats.record)
        self.metrics_registry = metrics_registry or CollectorRegistry()
        AgentCollector(self.snapshot, registry=self.metrics_registry)
        self.unix_server: aio.Server | None = None
        self.tcp_server: aio.Server | None = None
        self.tcp_port: int | None = None
        self.tls_cert = b""                 # the control port's self-signed certificate (public)
        self.health_server: aio.Server | None = None
        self.health_port: int | None = None
        self.metrics: MetricsServer | None = None
        self.stopped = asyncio.Event()
        self.serving = asyncio.Event()
        self.draining = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._apply_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False

    # -- state used by handlers and the collector --------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once warm kernels are compiled and until draining starts."""
        return self.state == pb.AGENT_STATE_READY

    @property
    def socket_path(self) -> str:
        """The Unix socket ("" when disabled)."""
        return self.settings.socket_path

    def uptime(self) -> float:
        """Seconds since construction."""
        return self.clock() - self.started_at

    def pool_view(self) -> PoolView:
        """The pool's numbers, zeros without a pool."""
        pool = self.runner.pool
        if pool is None:
            return PoolView()
        ps = pool.stats()
        return PoolView(workers=ps.workers, busy=ps.busy, queue_depth=ps.queue_depth, completed=ps.completed,
                        failed=ps.failed, restarts=ps.restarts)

    def sample(self) -> Sample:
        """Cached psutil sample of the agent and current workers."""
        pool = self.runner.pool
        self.sampler.set_workers(pool.worker_pids() if pool is not None else ())
        return self.sampler.sample()

    def heartbeat(self, sequence: int) -> pb.HeartbeatResponse:
        """Build a Heartbeat reply from cached samples and counters (no blocking calls)."""
        s = self.sample()
        ps = self.pool_view()
        a = s.agent
        return pb.HeartbeatResponse(
            sequence=sequence,
            state=self.state,
            time_unix_nano=time.time_ns(),
            uptime_seconds=self.uptime(),
            generation=self.generation,
            agent=pb.ProcessSample(pid=a.pid, cpu_percent=a.cpu_percent, rss_bytes=a.rss_bytes, alive=a.alive),
            workers=[pb.ProcessSample(pid=w.pid, cpu_percent=w.cpu_percent, rss_bytes=w.rss_bytes, alive=w.alive)
                     for w in s.workers],
            queue_depth=ps.queue_depth,
            kernels_in_flight=self.runner.admission.in_flight,
            busy_workers=ps.busy,
            kernels_ready=self.runner.ready.is_set(),
            sample_age_seconds=max(0.0, self.sampler.clock() - s.taken_at),
        )

    def snapshot(self) -> Snapshot:
        """One read of everything GetStats and /metrics report (see runtime/snapshot.py).

        Called on the event loop (GetStats) and on prometheus-client's HTTP thread (scrapes): the
        mappings are copied, so a scrape never iterates a dict the loop is growing.
        """
        try:
            sample: Sample | None = self.sample()
        except OSError:
            sample = None
        mon = self.monitor
        admission = self.runner.admission
        return Snapshot(
            version=self.version, ready=self.ready, time_unix_nano=time.time_ns(), uptime_seconds=self.uptime(),
            generation=self.generation, sample=sample, cpu_count=self.sampler.cpu_count, pool=self.pool_view(),
            kernels_in_flight=admission.in_flight, max_queue=admission.limit,
            rejected={"kernel": admission.rejected, "events": self.watchers.rejected},
            auth_failures=self.auth.rejected,
            rpc_calls=dict(self.rpc_stats.calls), rpc_latency=dict(self.rpc_stats.latency),
            heartbeat=mon.heartbeat, app_total=mon.app_total, ops=dict(mon.ops), kernels=dict(mon.kernels),
            refused_op_observations=mon.refused_observations,
            cache=replace(self.cache.counters), cache_entries=len(self.cache), cache_max_entries=self.cache.max_entries,
            cache_bytes=self.cache.bytes, l1=replace(self.monitor.l1), shared_cache=self.shared.view(),
            events_published=dict(self.events.published), events_dropped=self.events.dropped_total,
            event_watchers=len(self.events.subscribers),
        )

    def _publish_cache_change(self, change: Change) -> None:
        """Every write and invalidation reaches the clients' L1s as one CACHE_CHANGED event."""
        msg = change_message(change)
        if msg is not None:
            self.events.publish(pb.EVENT_TYPE_CACHE_CHANGED, f"cache {change.kind}: {change.removed} dependents dropped"
                                if change.kind == "put" else f"cache invalidate: {change.removed} entries removed",
                                cache=msg)

    # -- live config ---------------------------------------------------------------------------

    def configure(self, generation: int, msg: pb.AgentConfig, *, operator: bool = False) -> bool:
        """Validate and apply; False when `generation` is not newer than the applied one.

        From the operator (`operator`: the mutual-TLS control port, the only listener that serves
        Configure) any other generation applies, lower ones too: the operator sends its profile's
        current generation (a profile re-created starts over at 1). Without `operator` (in-process
        callers) only newer generations apply. A repeat of the applied generation stays a no-op."""
        new = merge_proto(self.config, msg, self.runner.known_kernels)
        if generation == self.generation or (generation < self.generation and not operator):
            return False
        old, self.config, self.generation = self.config, new, generation
        self.events.generation = generation
        self._apply_now(old, new)
        self.events.publish(pb.EVENT_TYPE_CONFIG_APPLIED, f"config generation {generation} applied",
                            {"generation": str(generation)}, config=to_proto(new))
        self._spawn(self._apply_slow(old, new))
        return True

    def _apply_now(self, old: LiveConfig, new: LiveConfig) -> None:
        """The cheap parts: cache sizing, admission limit, thread pool."""
        self.cache.reconfigure(max_entries=new.cache.max_entries, ttl=new.cache.ttl)
        self.shared.apply(new.cache.shared)
        self.runner.admission.limit = new.pools.max_queue
        if self._executor is None or old.pools.thread_workers != new.pools.thread_workers:
            previous = self._executor
            self._executor = ThreadPoolExecutor(new.pools.thread_workers, thread_name_prefix="perfpilot")
            self.runner.executor = self._executor  # not the loop's default: an embedding app keeps its own
            if previous is not None:
                previous.shutdown(wait=False)

    async def _apply_slow(self, old: LiveConfig, new: LiveConfig) -> None:
        """Pool resizes, serialized so successive Configures apply in order."""
        async with self._apply_lock:
            try:
                await self.runner.apply(old, new)
            except Exception:  # noqa: BLE001 - reported, the agent keeps serving
                log.exception("applying pool changes failed")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Apply the startup config, bind every listener, then warm kernels in the background."""
        if self.settings.initial_config:
            try:
                self.config = merge_proto(self.config, proto_from_dict(self.settings.initial_config),
                                          self.runner.known_kernels)
            except InvalidArgument as exc:
                raise ValueError(f"invalid --config: {exc}") from None
        self._apply_now(LiveConfig(), self.config)
        self.events.bind(asyncio.get_running_loop())
        await self.health.set_serving(False)
        options = [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        ca = load_ca(self.settings.ca_file) if self.settings.ca_file and self.settings.port >= 0 else None
        if self.settings.socket_path:
            self.unix_server = self._server(options, interceptors=(socket_policy(self.auth),
                                                                   DecodeInterceptor(self.malformed)))
            path = Path(self.settings.socket_path)
            if not path.parent.exists():
                path.parent.mkdir(parents=True, mode=0o700)
            if path.exists() or path.is_symlink():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise OSError(f"{path} exists and is not a socket")
                path.unlink()  # stale socket from a previous run
            self.unix_server.add_insecure_port(f"unix:{path}")
            await self.unix_server.start()
            os.chmod(path, 0o666)  # the app container may run as another uid; the directory guards access
        if ca is not None:
            # auth first: an unauthenticated body is refused before anything parses it
            self.tcp_server = self._server(options, interceptors=(ClientCertInterceptor(self.auth),
                                                                  DecodeInterceptor(self.malformed)),
                                           servicer=self.control_servicer)
            creds, self.tls_cert = server_credentials(ca)
            self.tcp_port = self.tcp_server.add_secure_port(f"{self.settings.listen_host}:{self.settings.port}", creds)
            await self.tcp_server.start()
        elif self.settings.port >= 0:
            log.warning("no --ca-file (PERFPILOT_CA_FILE): the TCP control port is off; the operator "
                        "cannot configure this agent or read its stats")
        if self.settings.health_port >= 0:
            self.health_server = self._server(options, interceptors=(health_policy(self.auth, self.tcp_port),
                                                                     DecodeInterceptor(self.malformed)))
            self.health_port = self.health_server.add_insecure_port(
                f"{self.settings.listen_host}:{self.settings.health_port}")
            await self.health_server.start()
        if self.settings.metrics_port >= 0:
            host = self.settings.metrics_host or self.settings.listen_host
            self.metrics = MetricsServer(self.metrics_registry, host=host, port=self.settings.metrics_port)
        self._spawn(self._housekeeping())
        self._spawn(self._warm_up())
        log.info("perfpilot agent %s listening: socket=%s tcp(mTLS)=%s:%s health=%s metrics=%s", self.version,
                 self.settings.socket_path or "-", self.settings.listen_host, self.tcp_port or "-",
                 self.health_port or "-", self.metrics.port if self.metrics else "-")

    def _server(self, options: list[tuple[str, Any]], *, interceptors: tuple[Any, ...],
                servicer: AgentServicer | None = None) -> aio.Server:
        server = aio.server(interceptors=interceptors, options=options, maximum_concurrent_rpcs=10_000)
        pb_grpc.add_AgentServicer_to_server(servicer or self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        return server

    async def _warm_up(self) -> None:
        try:
            await self.runner.warm_up()
        except Exception:  # noqa: BLE001 - stay NOT_SERVING, keep answering heartbeats
            log.exception("warming kernels failed; the agent stays NOT_SERVING")
            return
        if not self._stopping:
            self.state = pb.AGENT_STATE_READY
            await self.health.set_serving(True)
            self.serving.set()
            log.info("ready (warm kernels: %s)", ", ".join(self.config.kernels.warm) or "none")

    async def wait_ready(self) -> None:
        """Return once the agent is SERVING."""
        await self.serving.wait()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.cache.sweep()
            self.runner.housekeeping()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, end event streams, finish in-flight calls, stop workers, unlink the socket."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        grace = self.settings.grace if grace is None else grace
        self.state = pb.AGENT_STATE_DRAINING
        self.events.publish(pb.EVENT_TYPE_SHUTTING_DOWN, "agent is draining")
        await self.health.shutdown()
        self.events.close_all()
        servers = [s for s in (self.unix_server, self.tcp_server, self.health_server) if s is not None]
        stopping = [asyncio.ensure_future(s.stop(grace)) for s in servers]  # refuses new calls at once
        self.draining.set()
        await asyncio.gather(*stopping)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.close()
        await self.shared.close()
        if self.metrics is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.metrics.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self.settings.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.socket_path)
        self.stopped.set()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        """start(), then stop() on SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("signal received; draining for up to %.1fs", self.settings.grace)
        finally:
            await self.stop()
