"""Pod creation through the generated Kubernetes client with a JSON dict body and the raw response.

The client annotates create_namespaced_pod's body and result as V1Pod. The harness and the
benchmarks pass the pod as a dict (the client's pydantic validate_call turns it into the V1Pod)
and ask for the unparsed response (_preload_content=False: the urllib3 response, no model
deserialization in the measured path); this says so once, typed, instead of at every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import urllib3

if TYPE_CHECKING:
    from kubernetes import client


def create_pod_raw(core: client.CoreV1Api, namespace: str,
                   body: dict[str, Any]) -> urllib3.BaseHTTPResponse:
    """POST `body` as a pod in `namespace`; the unread response (.data: the created pod's JSON)."""
    out = core.create_namespaced_pod(namespace, body, _preload_content=False)  # type: ignore[arg-type]
    return cast(urllib3.BaseHTTPResponse, out)
