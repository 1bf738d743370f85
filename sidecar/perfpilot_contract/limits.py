"""Min, max and default of every live-config field (CRD spelling), and the known kernels.

The one place these numbers are written. crds/perfprofile.yaml states them again in its schema
(the API server needs them there); tests/contract/ checks that both agree and that every bound
walks through the operator's conversion into the sidecar's validation.

Pairs ("batchSize <= maxQueue", "heartbeat.timeout < interval") are checked only between fields
the user set; an unset member of a pair gets an *effective default* that fits the one that was
set (see `liveconfig.agent_config`), so a default never makes a profile invalid. That is why the
CRD schema carries no `default:` for those four fields: the API server applies schema defaults
before it runs the CEL rules, so a schema default would take part in the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from perfpilot_contract.durations import NS_PER_SECOND

MS = 1_000_000
S = NS_PER_SECOND
MIN = 60 * S
H = 3600 * S

Kind = Literal["int", "duration", "bool", "kernels"]


@dataclass(frozen=True)
class Limit:
    """One live-config field: durations in nanoseconds, `kernels` bounds are item counts."""

    path: str
    """CRD path under `spec`, e.g. "pools.maxQueue" or "cache.l1.ttl" (section first)."""
    kind: Kind
    lo: int
    hi: int
    default: int | bool | tuple[str, ...]
    note: str = ""
    """What special values mean, or how the default adapts (one sentence, for the docs table)."""
    schema_default: bool = True
    """False for members of a pair: the CRD states no default, the conversion computes it."""

    @property
    def number(self) -> int:
        """The default of an int or duration (nanoseconds) field."""
        if isinstance(self.default, bool) or not isinstance(self.default, int):
            raise TypeError(f"{self.path} has no numeric default")
        return self.default


KERNEL_NAMES: tuple[str, ...] = ("cosine_topk", "normalize_score", "weighted_mean")
"""Every kernel the sidecar can run (perfpilot_agent.kernels.registry is keyed by this tuple)."""
MAX_WARM = 32
"""Most kernels a profile may warm (names are unique, so today the known names bound it first)."""

PROCESS_WORKERS = Limit("pools.processWorkers", "int", 0, 64, 2,
                        "0 runs no process pool: a heartbeat-only sidecar that never loads numba")
THREAD_WORKERS = Limit("pools.threadWorkers", "int", 1, 256, 8)
MAX_QUEUE = Limit("pools.maxQueue", "int", 1, 1_000_000, 1000,
                  "kernel calls waiting or running; beyond it RESOURCE_EXHAUSTED. "
                  "Unset with batchSize set: max(1000, batchSize)", schema_default=False)
BATCH_SIZE = Limit("pools.batchSize", "int", 1, 100_000, 100,
                   "timings the client sends per RecordTimings; <= maxQueue. "
                   "Unset: min(100, maxQueue)", schema_default=False)
BATCH_WAIT = Limit("pools.batchWait", "duration", 0, 1 * S, 10 * MS,
                   "longest a timing waits in the client before it is sent; 0s sends at once")
CACHE_TTL = Limit("cache.ttl", "duration", 0, 24 * H, 5 * MIN,
                  "default TTL; 0s: values put without their own TTL are not cached")
CACHE_MAX_ENTRIES = Limit("cache.maxEntries", "int", 0, 10_000_000, 10_000,
                          "least recently used go first; 0 turns the cache off")
HEARTBEAT_INTERVAL = Limit("heartbeat.interval", "duration", 100 * MS, 10 * MIN, 5 * S,
                           "Unset with timeout set: max(5s, 2 × timeout)", schema_default=False)
HEARTBEAT_TIMEOUT = Limit("heartbeat.timeout", "duration", 1 * MS, 1 * MIN, 200 * MS,
                          "< interval. Unset: min(200ms, interval / 2)", schema_default=False)
L1_ENABLED = Limit("cache.l1.enabled", "bool", 0, 1, False,
                   "the app-side near-cache of the perfpilot client, kept coherent by the sidecar's events")
L1_MAX_ENTRIES = Limit("cache.l1.maxEntries", "int", 0, 1_000_000, 1000,
                       "per client process; least recently used go first; 0 keeps nothing")
L1_MAX_BYTES = Limit("cache.l1.maxBytes", "int", 0, 1 << 30, 16 << 20,
                     "per client process, keys + values; least recently used go first")
L1_TTL = Limit("cache.l1.ttl", "duration", 0, 1 * H, 10 * S,
               "never longer than the entry's time left in the sidecar; 0s keeps nothing")
L1_MAX_VALUE_BYTES = Limit("cache.l1.maxValueBytes", "int", 0, 4 << 20, 64 << 10,
                           "larger values stay in the sidecar's cache only")
KERNELS_WARM = Limit("kernels.warm", "kernels", 0, MAX_WARM, (),
                     "unique names, each one of " + ", ".join(KERNEL_NAMES))
KERNELS_PARALLEL = Limit("kernels.parallel", "bool", 0, 1, True,
                         "numba parallel=True inside one kernel call")
SHARED_TIMEOUT = Limit("cache.shared.timeout", "duration", 1 * MS, 10 * S, 50 * MS,
                       "longest a shared-tier read adds to a local miss (then: a miss), and the connect timeout")
SHARED_MAX_PENDING = Limit("cache.shared.maxPendingWrites", "int", 1, 1_000_000, 10_000,
                           "writes and invalidations waiting for Redis; beyond it a write is dropped "
                           "and its key invalidated everywhere later")

LIMITS: tuple[Limit, ...] = (
    PROCESS_WORKERS, THREAD_WORKERS, MAX_QUEUE, BATCH_SIZE, BATCH_WAIT,
    CACHE_TTL, CACHE_MAX_ENTRIES,
    L1_ENABLED, L1_MAX_ENTRIES, L1_MAX_BYTES, L1_TTL, L1_MAX_VALUE_BYTES,
    HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT,
    KERNELS_WARM, KERNELS_PARALLEL, SHARED_TIMEOUT, SHARED_MAX_PENDING,
)
BY_PATH: dict[str, Limit] = {limit.path: limit for limit in LIMITS}
SECTIONS: tuple[str, ...] = ("pools", "cache", "heartbeat", "kernels")
"""The live-config sections of a PerfProfile spec, in wire order."""

@dataclass(frozen=True)
class Text:
    """One string field of the live config: the CRD states the same pattern and maxLength."""

    path: str
    pattern: str
    max_length: int
    note: str = ""


SHARED_URL = Text("cache.shared.url",
                  r"^rediss?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[0-9]{1,2})?$", 300,
                  "required; redis://host[:port][/db], rediss:// for TLS; no credentials in it")
SHARED_KEY_PREFIX = Text("cache.shared.keyPrefix", r"^[A-Za-z0-9:/._-]*$", 128,
                         "empty: perfpilot:<namespace>/<profile>: (replicas of one profile share keys)")
SHARED_USERNAME = Text("cache.shared.username", r"^[A-Za-z0-9._@-]*$", 128, "Redis ACL user; empty: default")
SHARED_SECRET_NAME = Text("cache.shared.credentialsSecret.name",
                          r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", 253,
                          "Secret in the pod's namespace; needs a pod restart to change")
SHARED_SECRET_KEY = Text("cache.shared.credentialsSecret.key", r"^[-._a-zA-Z0-9]+$", 253,
                         "key holding the password")
SHARED_CA_NAME = Text("cache.shared.tls.caSecret.name", SHARED_SECRET_NAME.pattern, 253,
                      "Secret in the pod's namespace (e.g. cert-manager's); rediss:// only; needs a pod restart to change")
SHARED_CA_KEY = Text("cache.shared.tls.caSecret.key", SHARED_SECRET_KEY.pattern, 253,
                     "key holding the PEM CA certificate(s), e.g. ca.crt")
TEXTS: tuple[Text, ...] = (SHARED_URL, SHARED_KEY_PREFIX, SHARED_USERNAME, SHARED_SECRET_NAME, SHARED_SECRET_KEY,
                           SHARED_CA_NAME, SHARED_CA_KEY)
TEXT_BY_PATH: dict[str, Text] = {t.path: t for t in TEXTS}

CACHE_PUT_TTL = CACHE_TTL
"""CachePut's per-entry ttl follows cache.ttl's bounds (0s: the value is not stored)."""

# -- cache dependencies (CachePut.dependencies, CacheInvalidate): bounds the sidecar checks ---------
MAX_KEY_BYTES = 1024
"""Longest cache key or prefix, in UTF-8 bytes."""
MAX_TAG_BYTES = 256
"""Longest dependency tag, in UTF-8 bytes."""
MAX_DEPENDENCIES = 32
"""Most keys, prefixes and tags (each) one entry may depend on, or one CacheInvalidate may name as tags."""
MAX_INVALIDATE_KEYS = 1000
"""Most exact keys one CacheInvalidate may name."""
MAX_CHANGE_KEYS = 1000
"""Most keys one CACHE_CHANGED event lists; beyond it the event says `truncated` (every L1 clears)."""
MAX_STALENESS_SAMPLES = 10_000
"""Most staleness observations one RecordTimings may carry."""
