"""perfpilot sidecar agent: gRPC (Unix socket + TCP), /metrics, heartbeats, kernels, cache, monitor.

Run it with `perfpilot-sidecar` (see docs/sidecar.md). In-process use (tests, benchmarks):

    app = AgentApp(Settings(socket_path=..., port=-1, metrics_port=-1))
    await app.start(); await app.wait_ready(); ...; await app.stop()
"""

__version__ = "0.1.0"
