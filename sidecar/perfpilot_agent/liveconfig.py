"""The sidecar's side of the live config: the contract's validation answered as INVALID_ARGUMENT.

Limits, defaults and conversions live in perfpilot_contract (shared with the operator and the
client); this module only adds what is the agent's own: whether its kernels package is installed,
and turning ConfigError into InvalidArgument (the message, naming the field, is kept unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from perfpilot_contract import liveconfig as contract
from perfpilot_contract.liveconfig import Cache, ConfigError, Heartbeat, Kernels, LiveConfig, Pools, to_proto

__all__ = ["Cache", "Heartbeat", "Kernels", "KnownKernels", "LiveConfig", "Pools", "merge_proto",
           "proto_from_dict", "to_proto"]

KnownKernels = Callable[[], "frozenset[str] | None"]
"""Returns the kernel names this agent can run, or None when the kernels package is absent."""


def merge_proto(current: LiveConfig, msg: pb.AgentConfig, known: KnownKernels) -> LiveConfig:
    """Validate `msg` (the contract's rules) and return `current` with its sections replaced."""
    try:
        cfg = contract.merge(current, msg)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
    if msg.HasField("kernels") and cfg.kernels.warm:
        available = known()
        if available is None:
            raise InvalidArgument("kernels.warm lists kernels but this agent has no kernels installed "
                                  "(install perfpilot[sidecar])")
        for i, name in enumerate(cfg.kernels.warm):
            if name not in available:
                raise InvalidArgument(f"kernels.warm[{i}]: kernel {name!r} is not available in this agent; "
                                      f"available: {', '.join(sorted(available))}")
    return cfg


def proto_from_dict(data: Mapping[str, Any]) -> pb.AgentConfig:
    """AgentConfig from CRD-shaped live sections (--config / PERFPILOT_CONFIG), defaults filled."""
    try:
        return contract.agent_config(data)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
