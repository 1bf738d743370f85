"""perfpilot client library for apps: talk to the sidecar agent in your pod.

    from perfpilot_client import AgentClient, measure

    agent = AgentClient.connect()              # waits up to 10 s for the sidecar; PERFPILOT_SOCKET is set by the operator
    with agent.measure("llm_call"):            # timings are batched to the agent in the background
        ...
    @measure("plan")                           # decorator form (plain or async functions), on the default client
    def plan(...): ...
    agent.config.pools.batch_size              # live config; agent.on_config_change(callback)
    out = agent.run_kernel("cosine_topk", query=q, matrix=m, k=5)   # NumPy in, NumPy out ([client-kernels])
    agent.cache_put("user/42", b"..."); agent.cache_get("user/42"); agent.cache_invalidate("user/")
    agent.cache_put("profile/42", b"...", depends_on=["user/42"], tags=["profiles"])  # dropped with user/42

With `cache.l1.enabled` in the PerfProfile, cache_get answers from an in-process near-cache (L1)
kept coherent by the sidecar's events (stale for at most one event delivery; off while the event
stream is down): docs/sidecar.md, "Cache tiers".

AsyncAgentClient has the same methods as coroutines; PerfpilotMiddleware (perfpilot_client.asgi)
times every route of an ASGI app. Failed calls raise PerfpilotError subclasses. This package needs
grpc and protobuf only; NumPy only for kernels; never the agent itself or numba.
"""

from perfpilot_client.aio import AsyncAgentClient
from perfpilot_client.asgi import PerfpilotMiddleware
from perfpilot_client.client import AgentClient
from perfpilot_client.config import AgentConfig, Cache, Heartbeat, Kernels, Pools
from perfpilot_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Overloaded,
    PerfpilotError,
    SidecarError,
    SidecarUnavailable,
    Unauthenticated,
)
from perfpilot_client.timings import Measure, measure

__all__ = [
    "AgentClient",
    "AgentConfig",
    "AsyncAgentClient",
    "Cache",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Heartbeat",
    "InvalidArgument",
    "Kernels",
    "Measure",
    "Overloaded",
    "PerfpilotError",
    "PerfpilotMiddleware",
    "Pools",
    "SidecarError",
    "SidecarUnavailable",
    "Unauthenticated",
    "measure",
]
