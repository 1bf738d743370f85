"""PerfpilotMiddleware: time every HTTP request of an ASGI app (FastAPI, Starlette, any ASGI app).

Pure ASGI, so it needs neither framework installed:

    app = FastAPI()
    app.add_middleware(PerfpilotMiddleware, agent=agent)      # or PerfpilotMiddleware(app, agent=agent)

One observation per request, from the call to the end of the response; an error when the app
raises or answers 5xx. The op name is `<METHOD>:<route template>` when the router says which route
matched (FastAPI's `scope["route"]`; else the path with Starlette's `path_params` put back as
`:name`), behind the prefix of the Mounts it went through, written with the characters op names
allow: `GET:/items/:item_id`, `GET:/api/users/:name`. Without a route the
raw path is used for at most `max_paths` distinct paths, then `<METHOD>:other`; a 404 without a
route is `<METHOD>:not_found`, so scanners cannot exhaust the sidecar's op-name limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from perfpilot_client.base import ClientBase
from perfpilot_client.timings import TimingBuffer, record

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
MAX_OP_CHARS = 128
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")  # {name} or {name:convertor}
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.:/-]")


def op_name(method: str, path: str) -> str:
    """`GET:/items/{item_id}` -> `GET:/items/:item_id`, within the sidecar's op-name rules."""
    path = _PARAM.sub(r":\1", path)
    return _NOT_ALLOWED.sub("_", f"{method}:{path}")[:MAX_OP_CHARS]


def route_template(scope: Scope) -> str | None:
    """The matched route's path template, if the router left it in the scope."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    params = scope.get("path_params")
    path = scope.get("path")
    if params and isinstance(path, str) and "endpoint" in scope:  # Starlette: put the names back
        by_value = {str(v): k for k, v in params.items()}
        return "/".join(f"{{{by_value[seg]}}}" if seg in by_value else seg for seg in path.split("/"))
    return None


class PerfpilotMiddleware:
    """ASGI middleware recording one timing per HTTP request into `agent` (default: the default
    client, see `perfpilot_client.measure`). Other scope types (websocket, lifespan) pass through."""

    def __init__(self, app: ASGIApp, agent: ClientBase | None = None, *, max_paths: int = 50) -> None:
        self.app = app
        self.buffer: TimingBuffer | None = agent.timings if agent is not None else None
        self.max_paths = max_paths
        self._paths: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        root = str(scope.get("root_path", ""))  # a Mount below appends its prefix to the scope's
        start = time.perf_counter()
        failed = True
        try:
            await self.app(scope, receive, send_status)
            failed = status >= 500
        finally:
            record(self.buffer, self.op_for(scope, status, root), time.perf_counter() - start, failed)

    def op_for(self, scope: Scope, status: int, root: str = "") -> str:
        """The op name of a finished request (see the module docstring); `root` is the root_path
        the request arrived with, so a mounted app's routes keep their mount prefix."""
        method = str(scope.get("method", "GET")).upper()
        method = method if method in METHODS else "OTHER"
        template = route_template(scope)
        if template is not None:
            mounted = str(scope.get("root_path", ""))
            prefix = mounted[len(root):] if mounted.startswith(root) else ""
            return op_name(method, prefix + template)
        if status == 404:
            return f"{method}:not_found"
        path = str(scope.get("path", "/"))
        if path not in self._paths:
            if len(self._paths) >= self.max_paths:
                return f"{method}:other"
            self._paths.add(path)
        return op_name(method, path)
