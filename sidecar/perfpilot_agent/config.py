"""Process settings: command-line flags with environment fallbacks and defaults that just work.

Precedence: flag > environment variable > default. Every flag has exactly one env variable,
listed in FLAGS (docs/sidecar.md is written from the same table). The live config (pools, cache,
...) is separate (liveconfig.py): it can start from --config / PERFPILOT_CONFIG and then changes
through Configure without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfpilot_contract.paths import default_socket_path
from perfpilot_contract.sharedcache import CA_ENV, PASSWORD_ENV

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464
DEFAULT_HEALTH_PORT = 50052


@dataclass
class Settings:
    """Everything fixed for the life of the process."""

    socket_path: str = field(default_factory=default_socket_path)
    """Unix socket for the app container ("" disables it): every data call, Configure refused."""
    listen_host: str = "127.0.0.1"
    """TCP address for the operator. Set 0.0.0.0 (or the pod IP) in a cluster."""
    port: int = DEFAULT_PORT
    """TCP control port (mutual TLS, the operator); 0 picks a free port, -1 disables it."""
    health_port: int = DEFAULT_HEALTH_PORT
    """Plaintext port with only Heartbeat and grpc.health.v1 (kubelet probes); 0 any, -1 off."""
    ca_file: str = ""
    """PEM of the CA(s) whose client certificates may make control calls ("" : no control port)."""
    metrics_host: str | None = None
    """/metrics address; defaults to listen_host."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """/metrics port; 0 picks a free port, -1 disables the endpoint."""
    initial_config: dict[str, Any] = field(default_factory=dict)
    """CRD-shaped live config applied at start as generation 0."""
    grace: float = 10.0
    """Seconds SIGTERM waits for in-flight calls before cancelling them."""
    max_message_bytes: int = 64 << 20
    """Largest gRPC message accepted (inline tensors must fit)."""
    max_tensor_bytes: int = 256 << 20
    """Largest tensor (and sum of a call's tensors), inline or shared memory."""
    shm_threshold_bytes: int = 1 << 20
    """Outputs at least this large go to shared memory when the caller asks for it; also the pool's threshold."""
    shm_output_grace: float = 60.0
    """Seconds an output segment may stay un-collected before the agent unlinks it."""
    max_ops: int = 200
    """Distinct op names the monitor tracks (bounds memory and label cardinality)."""
    cache_max_value_bytes: int = 4 << 20
    """Largest value CachePut accepts."""
    cache_max_bytes: int = 256 << 20
    """Total bytes the cache may hold before evicting LRU entries."""
    event_buffer: int = 10_000
    """Events buffered per WatchEvents subscriber before the oldest are dropped."""
    max_watchers: int = 64
    """Concurrent WatchEvents streams."""
    heartbeat_sample_interval: float = 0.1
    """Seconds a psutil sample is reused for."""
    log_level: str = "INFO"
    """Python logging level."""
    profile: str = ""
    """<namespace>/<name> of the PerfProfile (env PERFPILOT_PROFILE, set by the webhook): the shared
    cache tier's default key prefix, so the replicas of one profile share entries."""
    pod_name: str = ""
    """env PERFPILOT_POD_NAME: names this replica in the shared tier's invalidation messages' logs."""
    cache_shared_password: str | None = field(default=None, repr=False)
    """env PERFPILOT_CACHE_SHARED_PASSWORD, from cache.shared.credentialsSecret (env only: never a flag,
    which `ps` would show)."""
    cache_shared_ca: str | None = None
    """env PERFPILOT_CACHE_SHARED_CA, from cache.shared.tls.caSecret: PEM CA certificate(s) a rediss://
    server may chain to besides the system CAs."""


# flag, env, type, help. Types: str/int/float; "config" is read specially.
FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("socket", "PERFPILOT_SOCKET", str, "Unix socket path ('' disables); default /var/run/perfpilot/agent.sock or $TMPDIR/perfpilot-$UID/agent.sock"),
    ("listen-host", "PERFPILOT_LISTEN_HOST", str, "TCP listen address (default 127.0.0.1; 0.0.0.0 in a cluster)"),
    ("port", "PERFPILOT_PORT", int, f"TCP control port, mutual TLS (default {DEFAULT_PORT}; 0 = any free port, -1 = off)"),
    ("health-port", "PERFPILOT_HEALTH_PORT", int, f"plaintext Heartbeat + grpc.health.v1 port for probes (default {DEFAULT_HEALTH_PORT}; 0 = any, -1 = off)"),
    ("ca-file", "PERFPILOT_CA_FILE", str, "PEM of the operator's CA: control calls need a client certificate it signed (unset: no control port)"),
    ("metrics-host", "PERFPILOT_METRICS_HOST", str, "/metrics listen address (default: --listen-host)"),
    ("metrics-port", "PERFPILOT_METRICS_PORT", int, f"/metrics port (default {DEFAULT_METRICS_PORT}; 0 = any free port, -1 = off)"),
    ("config", "PERFPILOT_CONFIG", str, "initial live config: JSON text or @path to a JSON file, CRD field names"),
    ("grace", "PERFPILOT_GRACE", float, "seconds to drain in-flight calls on SIGTERM (default 10)"),
    ("max-message-bytes", "PERFPILOT_MAX_MESSAGE_BYTES", int, "largest gRPC message (default 64 MiB)"),
    ("max-tensor-bytes", "PERFPILOT_MAX_TENSOR_BYTES", int, "largest tensor / call input total (default 256 MiB)"),
    ("shm-threshold-bytes", "PERFPILOT_SHM_THRESHOLD_BYTES", int, "shared-memory threshold for outputs and the pool (default 1 MiB)"),
    ("max-ops", "PERFPILOT_MAX_OPS", int, "distinct op names tracked (default 200)"),
    ("cache-max-value-bytes", "PERFPILOT_CACHE_MAX_VALUE_BYTES", int, "largest cached value (default 4 MiB)"),
    ("cache-max-bytes", "PERFPILOT_CACHE_MAX_BYTES", int, "total cache bytes (default 256 MiB)"),
    ("event-buffer", "PERFPILOT_EVENT_BUFFER", int, "events buffered per watcher (default 10000)"),
    ("max-watchers", "PERFPILOT_MAX_WATCHERS", int, "concurrent WatchEvents streams (default 64)"),
    ("log-level", "PERFPILOT_LOG_LEVEL", str, "DEBUG, INFO, WARNING, ERROR (default INFO)"),
)


def build_parser() -> argparse.ArgumentParser:
    """argparse parser generated from FLAGS (defaults resolved later, so env can fill them)."""
    parser = argparse.ArgumentParser(
        prog="perfpilot-sidecar",
        description="perfpilot sidecar agent: gRPC on a Unix socket and TCP (mutual TLS), probes, Prometheus /metrics.",
        epilog="Every flag falls back to the environment variable shown; see docs/sidecar.md.",
    )
    for flag, env, typ, help_ in FLAGS:
        parser.add_argument(f"--{flag}", type=typ, default=None, help=f"{help_} [env {env}]")
    return parser


def _read_config(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("--config must be a JSON object")
    return data


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then env, then defaults; raises SystemExit with a message on bad input."""
    env = os.environ if env is None else env
    parser = build_parser()
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for flag, env_name, typ, _ in FLAGS:
        attr = flag.replace("-", "_")
        value = getattr(ns, attr)
        if value is None and env_name in env:
            try:
                value = typ(env[env_name])
            except ValueError:
                parser.error(f"{env_name}={env[env_name]!r} is not a valid {typ.__name__}")
        if value is not None:
            values[attr] = value
    s = Settings()
    if "socket" in values:
        s.socket_path = values.pop("socket")
    s.profile = env.get("PERFPILOT_PROFILE", "")
    s.pod_name = env.get("PERFPILOT_POD_NAME", "")
    s.cache_shared_password = env.get(PASSWORD_ENV) or None
    s.cache_shared_ca = env.get(CA_ENV) or None
    config_text = values.pop("config", None)
    if config_text:
        try:
            s.initial_config = _read_config(config_text)
        except (OSError, ValueError) as exc:
            parser.error(f"--config: {exc}")
    for attr, value in values.items():
        setattr(s, attr, value)
    if len(s.socket_path.encode()) > 100:
        parser.error(f"--socket path is too long for a Unix socket ({len(s.socket_path)} > 100 bytes)")
    for name in ("port", "health_port", "metrics_port"):
        if not -1 <= getattr(s, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be -1..65535")
    if s.grace < 0:
        parser.error("--grace must be >= 0")
    return s
