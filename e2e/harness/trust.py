"""The operator's credential for tests and benches on the local cluster: read its CA Secret (the
admin kubeconfig may) and issue a client certificate from it, as an operator replica does at start.

Only the ground-truth checks use this (ask a sidecar what it runs); an app pod cannot: it has no
Secret, and its namespace holds none.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import grpc

from e2e.harness.dev import OPERATOR_NAMESPACE
from perfpilot_contract.trust import AGENT_SERVER_NAME, OPERATOR_CLIENT_NAME
from perfpilot_operator.certs import from_secret_data, issue
from perfpilot_operator.clients.agents import ClientIdentity, Target, fetch_server_cert
from perfpilot_operator.clients.casecret import SECRET_NAME

SIDECAR_PORT = 50051


def operator_identity(kubectl: Any, namespace: str = OPERATOR_NAMESPACE) -> ClientIdentity:
    """A fresh operator client certificate; `kubectl(*args)` returns a CompletedProcess."""
    secret = json.loads(kubectl("get", "secret", SECRET_NAME, "-n", namespace, "-o", "json").stdout)
    bundle = from_secret_data(secret.get("data"), f"{namespace}/{SECRET_NAME}")
    now = dt.datetime.now(dt.UTC)
    key, cert = issue(bundle.issuer(now), OPERATOR_CLIENT_NAME, client=True, now=now)
    return ClientIdentity(key, cert)


def control_channel(identity: ClientIdentity, ip: str, port: int = SIDECAR_PORT) -> grpc.Channel:
    """A blocking mutual-TLS channel to a sidecar's control port (its certificate pinned)."""
    pinned = asyncio.run(fetch_server_cert(Target(ip, port), identity, 5.0))
    creds = grpc.ssl_channel_credentials(pinned, private_key=identity.key, certificate_chain=identity.cert)
    return grpc.secure_channel(f"{ip}:{port}", creds,
                               options=[("grpc.ssl_target_name_override", AGENT_SERVER_NAME)])


async def aio_control_channel(identity: ClientIdentity, ip: str, port: int = SIDECAR_PORT) -> grpc.aio.Channel:
    """control_channel for asyncio callers."""
    pinned = await fetch_server_cert(Target(ip, port), identity, 5.0)
    creds = grpc.ssl_channel_credentials(pinned, private_key=identity.key, certificate_chain=identity.cert)
    return grpc.aio.secure_channel(f"{ip}:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", AGENT_SERVER_NAME)])
