"""The operator's CA Secret, in the operator's own namespace: created when absent, rotated when due.

Replicas race safely: a 409 on create means another replica created it first (read the winner's);
a 409 on replace means another replica rotated first (read again). RBAC: get, create and update on
Secrets of the operator's namespace only (charts/perfpilot/templates/role.yaml).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from perfpilot_operator.certs import CABundle, from_secret_data, new_authority, rotated, to_secret_data

SECRET_NAME = "perfpilot-operator-ca"
ATTEMPTS = 5


def _body(name: str, bundle: CABundle, resource_version: str | None = None) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, resource_version=resource_version, labels={
            "app.kubernetes.io/part-of": "perfpilot", "app.kubernetes.io/component": "operator-ca"}),
        data=dict[str, bytes | str](to_secret_data(bundle)), type="Opaque")


def ensure_ca_sync(core: Any, namespace: str, name: str = SECRET_NAME,
                   now: dt.datetime | None = None) -> CABundle:
    """The shared CA bundle: read, created when absent, rotated when due (blocking API calls)."""
    now = now or dt.datetime.now(dt.UTC)
    where = f"{namespace}/{name}"
    for _ in range(ATTEMPTS):
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            bundle = CABundle((new_authority(now),))
            try:
                core.create_namespaced_secret(namespace, _body(name, bundle))
            except ApiException as e:
                if e.status == 409:
                    continue            # another replica created it first: use the winner's
                if e.status == 404:
                    raise RuntimeError(f"cannot create the CA Secret {where}: namespace {namespace!r} "
                                       f"does not exist; create it or set PERFPILOT_NAMESPACE") from e
                raise
            return bundle
        bundle = from_secret_data(secret.data, where)
        new = rotated(bundle, now)
        if new is bundle:
            return bundle
        try:
            core.replace_namespaced_secret(name, namespace,
                                           _body(name, new, secret.metadata.resource_version))
        except ApiException as e:
            if e.status == 409:
                continue                # another replica rotated first: read its result
            raise
        return new
    raise RuntimeError(f"the CA Secret {where} kept changing under {ATTEMPTS} attempts")


async def ensure_ca(core: Any, namespace: str, name: str = SECRET_NAME,
                    now: dt.datetime | None = None) -> CABundle:
    """ensure_ca_sync in a thread (the kubernetes client blocks)."""
    return await asyncio.to_thread(ensure_ca_sync, core, namespace, name, now)
