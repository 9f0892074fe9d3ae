"""The front guard (inside the metrics, the outermost): the cheap refusals and fixed answers, before any body.

Refuses an `x-request-id` it could not echo byte for byte; answers 404/405 in JSON for paths and methods no route
takes; refuses with 415 a non-JSON request body, and a non-JSON type declared without one; serves the docs page at `/`
without anything from outside the origin; answers 503 while the worker drains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from penguins.adapter import DRAINING
from penguins.errors import Refused
from penguins.http.asgi import JSON_TYPES, has_body, header, is_json, send_error
from penguins.http.docs_page import DOCS_FILES, docs_file
from penguins.http.routing import ASGIApp, RouteTable
from penguins.settings import Settings, get_settings

REQUEST_ID_MAX = 128


class Front:
    """The cheap refusals and the fixed answers, before anything parses a body."""

    def __init__(
        self,
        app: ASGIApp,
        admin_routes: tuple[str, ...] = ("/reload",),
        conflict_routes: tuple[str, ...] = (),
        runtime_prefixes: tuple[str, ...] = (),
        settings: Settings | None = None,
    ):
        self.app = app
        self.routes = RouteTable(app)
        self.runtime_prefixes = runtime_prefixes  # routes made at runtime, further in: not ours to call unknown
        self.settings = settings or get_settings()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if DRAINING.is_set():  # shutting down: finish what is in flight, send the rest elsewhere, cleanly
            return await send_error(
                send,
                Refused(503, "this server is shutting down: retry (elsewhere)"),
                [(b"connection", b"close"), (b"retry-after", b"1")],
            )
        request_ids = [value for key, value in scope["headers"] if key == b"x-request-id"]
        if request_ids and (len(request_ids) > 1 or not _echoable(request_ids[0])):
            return await send_error(
                send,
                Refused(
                    400,
                    f"x-request-id must be given once, 1 to {REQUEST_ID_MAX} visible ASCII characters (it is echoed "
                    "back and logged)",
                    field="x-request-id",
                ),
            )
        method, path = scope["method"], scope["path"]
        if method in ("GET", "HEAD") and path in DOCS_FILES:
            return await docs_file(send, path, head=method == "HEAD")
        if method == "OPTIONS" and self.settings.cors_origins and header(scope, b"access-control-request-method"):
            return await self.app(scope, receive, send)  # a CORS preflight: BentoML's CORS middleware, further in
        route, allowed = self.routes.match(scope)
        if route is None and allowed:
            return await send_error(
                send,
                Refused(405, f"{method} is not allowed on {path}", allowed=sorted(allowed)),
                [(b"allow", ", ".join(sorted(allowed)).encode())],
            )
        if route is None and not path.startswith(self.runtime_prefixes):
            return await send_error(send, Refused(404, f"no route {path}: see /docs.json for the API"))
        content_type = header(scope, b"content-type")
        # A body, or a type declared without one (BentoML would parse multipart/form-data with no boundary and 500).
        if method == "POST" and (has_body(scope) or content_type is not None) and not is_json(content_type):
            return await send_error(
                send,
                Refused(
                    415, "the request body must be JSON (Content-Type: application/json)", accepted=list(JSON_TYPES)
                ),
            )
        await self.app(scope, receive, send)


def _echoable(value: bytes) -> bool:
    return 0 < len(value) <= REQUEST_ID_MAX and all(0x21 <= byte <= 0x7E for byte in value)
