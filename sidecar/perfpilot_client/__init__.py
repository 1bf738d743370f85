"""perfpilot client library for apps: talk to the sidecar agent in your pod.

    from perfpilot_client import AgentClient

    agent = AgentClient()                      # PERFPILOT_SOCKET (set by the operator) or the default socket
    with agent.measure("llm_call"):            # timings are batched to the agent in the background
        ...
    agent.config.pools.batch_size              # live config; agent.on_config_change(callback)
    out = agent.run_kernel("cosine_topk", query=q, matrix=m, k=5)   # NumPy in, NumPy out
    agent.cache_put("user/42", b"..."); agent.cache_get("user/42"); agent.cache_invalidate("user/")

AsyncAgentClient has the same methods as coroutines. This package imports NumPy and grpc only;
never the agent itself or numba.
"""

from perfpilot_client.aio import AsyncAgentClient
from perfpilot_client.client import AgentClient
from perfpilot_client.config import AgentConfig, Cache, Heartbeat, Kernels, Pools
from perfpilot_client.measure import Measure

__all__ = [
    "AgentClient",
    "AgentConfig",
    "AsyncAgentClient",
    "Cache",
    "Heartbeat",
    "Kernels",
    "Measure",
    "Pools",
]
