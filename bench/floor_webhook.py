"""The webhook burst's floor: a mutating webhook with nothing else to do, in a process of its own.

It answers every AdmissionReview at once with a fixed JSON patch (the one perfpilot's webhook
made for the same pod, read back by the benchmark), over the same stack as kopf's server (aiohttp,
TLS). A burst through it costs what any Python webhook making that change costs the API server:
the call's network and TLS, the review's (de)serialisation on both sides, and storing the larger
pod. What perfpilot's webhook adds beyond it is the operator's own: kopf's admission machinery, the
handler, and sharing a process with the reconcile work.

    python -m bench.floor_webhook --port P --cert C --key K --patch FILE   # until SIGTERM
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
from pathlib import Path
from typing import Any


def review_response(review: dict[str, Any], patch_b64: str) -> dict[str, Any]:
    """Allowed, with the fixed patch, for the review's uid."""
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True,
                         "patchType": "JSONPatch", "patch": patch_b64}}


def main(argv: list[str] | None = None) -> int:
    from aiohttp import web

    ap = argparse.ArgumentParser(prog="python -m bench.floor_webhook",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--patch", type=Path, required=True, help="a JSON patch (a list of ops)")
    ns = ap.parse_args(argv)
    patch_b64 = base64.b64encode(ns.patch.read_bytes()).decode()

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(review_response(json.loads(await request.text()), patch_b64))

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ns.cert, ns.key)
    app = web.Application()
    app.add_routes([web.post("/{path:.*}", serve)])
    web.run_app(app, host="127.0.0.1", port=ns.port, ssl_context=ctx, print=None,
                handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
