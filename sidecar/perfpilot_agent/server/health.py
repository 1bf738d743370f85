"""grpc.health.v1 wiring: NOT_SERVING until warm kernels are compiled, NOT_SERVING again on drain.

Both the overall status ("") and the Agent service name are set, so a Kubernetes gRPC probe (which
asks for "") and a client asking for "perfpilot.v1.Agent" see the same thing.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

SERVICE = "perfpilot.v1.Agent"


class Health:
    """Thin wrapper around the aio HealthServicer."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.serving = False

    async def set_serving(self, serving: bool) -> None:
        """Flip both names together."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.serving = serving
        for name in ("", SERVICE):
            await self.servicer.set(name, status)

    async def shutdown(self) -> None:
        """NOT_SERVING for every service, permanently (later set() calls are ignored)."""
        self.serving = False
        await self.servicer.enter_graceful_shutdown()
