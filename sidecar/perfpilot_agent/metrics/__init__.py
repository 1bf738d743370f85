"""Prometheus metrics of the agent (names in definitions.py, documented in docs/metrics.md)."""
