"""Channel options shared by the sync and async clients: message limits and the retry policy.

Retries are gRPC's own (a service config on the channel), so they cost nothing when calls succeed
and apply the same way to both clients. Only idempotent calls are retried, and only on
UNAVAILABLE (the sidecar is restarting, draining or not listening yet), with exponential backoff:
  retried:      Heartbeat, GetConfig, GetStats, Configure (generation-guarded), CacheGet,
                CachePut (same key and value), CacheInvalidate (same prefix)
  never:        RecordTimings (a repeat would count observations twice), RunKernel (UNAVAILABLE
                there means a worker died running it; a repeat may kill another), WatchEvents
                (the config watcher resubscribes on its own)
Retry throttling stops the retries when most calls fail, so a dead sidecar is not hammered.
"""

from __future__ import annotations

import json
from typing import Any

SERVICE = "perfpilot.v1.Agent"
IDEMPOTENT_METHODS = (
    "Heartbeat", "GetConfig", "GetStats", "Configure", "CacheGet", "CachePut", "CacheInvalidate",
)
NOT_RETRIED_METHODS = ("RecordTimings", "RunKernel", "WatchEvents")
RETRY_MAX_ATTEMPTS = 4  # the first call + 3 retries
RETRY_INITIAL_BACKOFF = 0.1
RETRY_MAX_BACKOFF = 1.0
RETRY_BACKOFF_MULTIPLIER = 2.0


def service_config() -> str:
    """The JSON service config with the retry policy above (gRPC's A6 retry design)."""
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": SERVICE, "method": m} for m in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": RETRY_MAX_ATTEMPTS,
                "initialBackoff": f"{RETRY_INITIAL_BACKOFF}s",
                "maxBackoff": f"{RETRY_MAX_BACKOFF}s",
                "backoffMultiplier": RETRY_BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    })


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options for grpc.insecure_channel / grpc.aio.insecure_channel."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
    ]
