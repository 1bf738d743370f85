"""spec.cache.shared: the optional Redis/Valkey tier every replica's sidecar shares.

CRD-shaped dict -> SharedCacheConfig message (operator, PERFPILOT_CONFIG) -> validated SharedCache
(sidecar), and back. Bounds and patterns come from perfpilot_contract.limits, like every other
live field; errors are ConfigError naming the field ("cache.shared.url must ..."). The password
is never part of the config: the webhook puts the Secret's key into the sidecar's environment
(PASSWORD_ENV), so neither the operator nor a Configure ever carries it; a private CA
(tls.caSecret) reaches the sidecar the same way (CA_ENV).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.duration_pb2 import Duration

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract import durations
from perfpilot_contract import limits as L
from perfpilot_contract.durations import NS_PER_SECOND

PASSWORD_ENV = "PERFPILOT_CACHE_SHARED_PASSWORD"
"""The sidecar's environment variable the webhook fills from credentialsSecret (secretKeyRef)."""
CA_ENV = "PERFPILOT_CACHE_SHARED_CA"
"""The sidecar's environment variable the webhook fills from tls.caSecret (PEM, secretKeyRef)."""
FIELDS = ("url", "keyPrefix", "username", "credentialsSecret", "timeout", "maxPendingWrites", "tls")


class SharedConfigError(ValueError):
    """Raised by this module; liveconfig turns it into its ConfigError (same message)."""


@dataclass(frozen=True)
class SecretRef:
    """credentialsSecret: a key of a Secret in the pod's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class SharedCache:
    """The validated spec.cache.shared (timeout in seconds)."""

    url: str
    key_prefix: str = ""
    username: str = ""
    credentials: SecretRef | None = None
    timeout: float = L.SHARED_TIMEOUT.number / NS_PER_SECOND
    max_pending_writes: int = L.SHARED_MAX_PENDING.number
    ca_secret: SecretRef | None = None
    """tls.caSecret: a private CA trusted besides the system CAs (its PEM is in CA_ENV)."""

    def endpoint(self) -> tuple[bool, str, int, int]:
        """(tls, host, port, db) of the url (already validated)."""
        scheme, _, rest = self.url.partition("://")
        hostport, _, db = rest.partition("/")
        host, _, port = hostport.partition(":")
        return scheme == "rediss", host, int(port) if port else 6379, int(db) if db else 0


def check_text(text: L.Text, value: str) -> str:
    """`value` within the field's maxLength and pattern, else an error naming the field."""
    if len(value) > text.max_length:
        raise SharedConfigError(f"{text.path} must be at most {text.max_length} characters, got {len(value)}")
    if not re.fullmatch(text.pattern, value):
        raise SharedConfigError(f"{text.path} must match {text.pattern}, got {value[:80]!r}")
    return value


def from_proto(msg: pb.SharedCacheConfig) -> SharedCache:
    """Validate the message; every error names its field (cache.shared.…)."""
    if "@" in msg.url:  # never echoed: the part before @ would be a password
        raise SharedConfigError("cache.shared.url must not carry credentials (user:password@): "
                                "name a Secret in cache.shared.credentialsSecret")
    url = check_text(L.SHARED_URL, msg.url)
    if not url:
        raise SharedConfigError("cache.shared.url is required when cache.shared is set")
    hostport, _, db = url.split("//", 1)[1].partition("/")
    port = hostport.partition(":")[2]
    if port and not 1 <= int(port) <= 65535:
        raise SharedConfigError(f"cache.shared.url: port must be 1..65535, got {port}")
    if db and int(db) > 15:
        raise SharedConfigError(f"cache.shared.url: database must be 0..15, got {db}")
    credentials = None
    if msg.HasField("credentials_secret"):
        s = msg.credentials_secret
        credentials = SecretRef(check_text(L.SHARED_SECRET_NAME, s.name), check_text(L.SHARED_SECRET_KEY, s.key))
    timeout = L.SHARED_TIMEOUT.number
    if msg.HasField("timeout"):
        timeout = _duration(L.SHARED_TIMEOUT, msg.timeout)
    pending = msg.max_pending_writes if msg.HasField("max_pending_writes") else L.SHARED_MAX_PENDING.number
    if not L.SHARED_MAX_PENDING.lo <= pending <= L.SHARED_MAX_PENDING.hi:
        raise SharedConfigError(f"{L.SHARED_MAX_PENDING.path} must be between {L.SHARED_MAX_PENDING.lo} and "
                                f"{L.SHARED_MAX_PENDING.hi}, got {pending}")
    ca_secret = None
    if msg.HasField("tls") and msg.tls.HasField("ca_secret"):
        if not url.startswith("rediss://"):
            raise SharedConfigError("cache.shared.tls.caSecret needs a rediss:// cache.shared.url (TLS), got "
                                    f"{url.partition('://')[0]}://")
        s = msg.tls.ca_secret
        ca_secret = SecretRef(check_text(L.SHARED_CA_NAME, s.name), check_text(L.SHARED_CA_KEY, s.key))
    return SharedCache(url=url, key_prefix=check_text(L.SHARED_KEY_PREFIX, msg.key_prefix),
                       username=check_text(L.SHARED_USERNAME, msg.username), credentials=credentials,
                       timeout=timeout / NS_PER_SECOND, max_pending_writes=pending, ca_secret=ca_secret)


def _duration(limit: L.Limit, d: Duration) -> int:
    try:
        ns = durations.from_proto(limit.path, d)
    except durations.DurationError as exc:
        raise SharedConfigError(str(exc)) from None
    if not limit.lo <= ns <= limit.hi:
        raise SharedConfigError(f"{limit.path} must be between {durations.format_ns(limit.lo)} and "
                                f"{durations.format_ns(limit.hi)}, got {durations.format_ns(ns)}")
    return ns


def to_proto(cfg: SharedCache) -> pb.SharedCacheConfig:
    """The message for a validated config (every field set)."""
    msg = pb.SharedCacheConfig(url=cfg.url, key_prefix=cfg.key_prefix, username=cfg.username,
                               timeout=durations.to_proto(durations.seconds_to_ns(cfg.timeout)),
                               max_pending_writes=cfg.max_pending_writes)
    if cfg.credentials is not None:
        msg.credentials_secret.CopyFrom(pb.SecretKeySelector(name=cfg.credentials.name, key=cfg.credentials.key))
    if cfg.ca_secret is not None:
        msg.tls.ca_secret.CopyFrom(pb.SecretKeySelector(name=cfg.ca_secret.name, key=cfg.ca_secret.key))
    return msg


def read_proto(msg: pb.SharedCacheConfig) -> SharedCache:
    """Unit conversion only, no validation (the app's view of what the sidecar applied)."""
    s, ca = msg.credentials_secret, msg.tls.ca_secret
    return SharedCache(url=msg.url, key_prefix=msg.key_prefix, username=msg.username,
                       credentials=SecretRef(s.name, s.key) if msg.HasField("credentials_secret") else None,
                       timeout=msg.timeout.seconds + msg.timeout.nanos / NS_PER_SECOND,
                       max_pending_writes=msg.max_pending_writes,
                       ca_secret=SecretRef(ca.name, ca.key) if msg.tls.HasField("ca_secret") else None)


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SharedConfigError(f"{path} must be a string, got {value!r}"[:200])
    return value


def from_dict(data: Any) -> pb.SharedCacheConfig:
    """SharedCacheConfig for a CRD-shaped cache.shared object (defaults filled)."""
    if not isinstance(data, Mapping):
        raise SharedConfigError(f"cache.shared must be an object, got {type(data).__name__}")
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise SharedConfigError(f"unknown field(s) in cache.shared: {', '.join(sorted(map(str, unknown)))}")
    if "url" not in data:
        raise SharedConfigError("cache.shared.url is required when cache.shared is set")
    msg = pb.SharedCacheConfig(url=_string("cache.shared.url", data["url"]),
                               key_prefix=_string("cache.shared.keyPrefix", data.get("keyPrefix", "")),
                               username=_string("cache.shared.username", data.get("username", "")))
    timeout = data.get("timeout")
    if timeout is None:
        msg.timeout.CopyFrom(durations.to_proto(L.SHARED_TIMEOUT.number))
    else:
        try:
            ns = durations.parse_ns(_string("cache.shared.timeout", timeout))
        except durations.DurationError as exc:
            raise SharedConfigError(f"cache.shared.timeout: {exc}") from None
        if abs(ns) > durations.MAX_PROTO_SECONDS * NS_PER_SECOND:
            raise SharedConfigError(f"cache.shared.timeout is out of range: {timeout!r}")
        msg.timeout.CopyFrom(durations.to_proto(ns))
    pending = data.get("maxPendingWrites", L.SHARED_MAX_PENDING.number)
    if isinstance(pending, bool) or not isinstance(pending, int) or not -(2**31) <= pending < 2**31:
        raise SharedConfigError(f"cache.shared.maxPendingWrites must be an integer, got {pending!r}"[:200])
    msg.max_pending_writes = pending
    secret = data.get("credentialsSecret")
    if secret is not None:
        msg.credentials_secret.CopyFrom(_secret_ref("cache.shared.credentialsSecret", secret))
    tls = data.get("tls")
    if tls is not None:
        if not isinstance(tls, Mapping) or set(tls) - {"caSecret"}:
            raise SharedConfigError("cache.shared.tls must be {caSecret: {name: <Secret>, key: <key>}}")
        msg.tls.SetInParent()
        if tls.get("caSecret") is not None:
            msg.tls.ca_secret.CopyFrom(_secret_ref("cache.shared.tls.caSecret", tls["caSecret"]))
    return msg


def _secret_ref(path: str, ref: Any) -> pb.SecretKeySelector:
    if not isinstance(ref, Mapping) or set(ref) - {"name", "key"} or not {"name", "key"} <= set(ref):
        raise SharedConfigError(f"{path} must be {{name: <Secret>, key: <key>}}")
    return pb.SecretKeySelector(name=_string(f"{path}.name", ref["name"]), key=_string(f"{path}.key", ref["key"]))
