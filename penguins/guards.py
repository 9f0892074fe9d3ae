"""ASGI guards in front of BentoML's routes, for what no anonymous client may do to the service, and the published
contract made exact.

- `Front` (outermost of ours): refuses an `x-request-id` it could not echo byte for byte; answers 404/405 in JSON
  for paths and methods no route takes; refuses non-JSON request bodies with 415; serves the docs page at `/` without
  anything from outside the origin, and `/docs.json` with every error status each operation can answer (`exact_spec`).
- `Bodies` (inside the gateway): reads a POST body whole before BentoML does, so a client that disconnects mid-body is
  simply gone (BentoML counted a 500 and logged a traceback); bounds how many bulk bodies a process works on at once,
  the next ones waiting their turn with their bodies unread (429 with Retry-After beyond the queue).
- `ErrorHints`: names a refused unknown field and the closest allowed one in the 400's `detail`.
- `strict_input(api)`: an API method refuses unknown top-level fields (BentoML ignores them); call it for every API,
  including routes made at runtime.

Every class here looks at routes through `RouteTable`, which reads the router at request time, so routes added while
serving are known at once.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from penguins.contract import FEATURES, unknown_field_message
from penguins.settings import Settings, get_settings
from penguins.workarounds import DRAINING

ASGIApp = Callable[..., Any]

# Top-level fields of each API route's input, for `ErrorHints` (filled by `strict_input`).
INPUT_FIELDS: dict[str, tuple[str, ...]] = {}
JSON_TYPES = ("application/json",)
REQUEST_ID_MAX = 128


def strict_input(api: Any) -> None:
    """Make one BentoML API method refuse unknown top-level fields (`"modle": "knn"` was silently ignored)."""
    spec = api.input_spec
    INPUT_FIELDS[api.route] = tuple(spec.model_fields)
    if getattr(spec, "__root_input__", False) or spec.model_config.get("extra") == "forbid":
        return
    spec.model_config["extra"] = "forbid"
    spec.model_rebuild(force=True)


class RouteTable:
    """Which route of the app below takes a request, read from its Starlette router at request time."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._router: Any = None
        self._plain: dict[str, Any] = {}
        self._key: tuple[int, int] | None = None

    def router(self) -> Any:
        if self._router is None:
            from starlette.routing import Router

            node = self.app
            for _ in range(64):  # middlewares down to the router: each keeps the next as `.app`
                if isinstance(node, Router) or node is None:
                    break
                node = getattr(node, "app", None)
            self._router = node if isinstance(node, Router) else False
        return self._router or None

    def match(self, scope: dict[str, Any]) -> tuple[str | None, set[str]]:
        """(the matching route's path template, or None; the methods allowed on the path when only it matched)."""
        router = self.router()
        if router is None:
            return scope["path"], set()  # not a router below: no opinion
        routes = router.routes
        key = (id(routes), len(routes))
        if key != self._key:  # routes changed: re-index the plain ones (no parameters), the API routes among them
            self._plain = {r.path: r for r in routes if getattr(r, "param_convertors", None) == {} and r.methods}
            self._key = key
        plain = self._plain.get(scope["path"])
        if plain is not None and scope["method"] in plain.methods:
            return plain.path, set()
        label, allowed = _match(routes, scope)
        if label is None and not allowed and router.redirect_slashes and scope["path"] != "/":
            # The router redirects /ui to /ui/ (and back): a path it redirects is taken too.
            path = scope["path"]
            other = path[:-1] if path.endswith("/") else path + "/"
            label, _ = _match(routes, {**scope, "path": other})
        return label, allowed


def _match(routes: list[Any], scope: dict[str, Any]) -> tuple[str | None, set[str]]:
    from starlette.routing import Match

    allowed: set[str] = set()
    for route in routes:
        found, _ = route.matches(scope)
        if found is Match.FULL:
            return route.path, set()
        if found is Match.PARTIAL:
            allowed |= set(getattr(route, "methods", None) or ())
    return None, allowed


async def respond(
    send: Callable[..., Any], status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _has_body(scope: dict[str, Any]) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return _header(scope, b"transfer-encoding") is not None


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower().decode("latin-1")
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


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
        self.admin_routes = admin_routes
        self.conflict_routes = conflict_routes
        self.settings = settings or get_settings()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if DRAINING.is_set():  # shutting down: finish what is in flight, send the rest elsewhere, cleanly
            return await respond(
                send,
                503,
                {"error": "this server is shutting down: retry (elsewhere)"},
                [(b"connection", b"close"), (b"retry-after", b"1")],
            )
        request_id = _header(scope, b"x-request-id")
        if request_id is not None and not _echoable(request_id):
            return await respond(
                send,
                400,
                {
                    "error": f"x-request-id must be 1 to {REQUEST_ID_MAX} visible ASCII characters (it is echoed back)",
                    "field": "x-request-id",
                },
            )
        method, path = scope["method"], scope["path"]
        if method in ("GET", "HEAD") and path in DOCS_FILES:
            return await _docs_file(send, path, head=method == "HEAD")
        if method == "OPTIONS" and self.settings.cors_origins and _header(scope, b"access-control-request-method"):
            return await self.app(scope, receive, send)  # a CORS preflight: BentoML's CORS middleware, further in
        route, allowed = self.routes.match(scope)
        if route is None and allowed:
            return await respond(
                send,
                405,
                {"error": f"{method} is not allowed on {path}", "allowed": sorted(allowed)},
                [(b"allow", ", ".join(sorted(allowed)).encode())],
            )
        if route is None and not path.startswith(self.runtime_prefixes):
            return await respond(send, 404, {"error": f"no route {path}: see /docs.json for the API"})
        if method == "GET" and path == "/docs.json":
            return await self._spec(scope, receive, send)
        if method == "POST" and _has_body(scope) and not _is_json(_header(scope, b"content-type")):
            return await respond(
                send,
                415,
                {
                    "error": "the request body must be JSON (Content-Type: application/json)",
                    "accepted": list(JSON_TYPES),
                },
            )
        await self.app(scope, receive, send)

    async def _spec(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def collect(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        if start.get("status") != 200:
            return await respond(send, 500, {"error": "the OpenAPI document could not be generated"})
        token = self.settings.admin_token is not None
        spec = exact_spec(
            json.loads(b"".join(chunks)),
            admin_routes=self.admin_routes if token else (),
            conflict_routes=self.conflict_routes,
        )
        await respond(send, 200, spec)


def _echoable(value: bytes) -> bool:
    return 0 < len(value) <= REQUEST_ID_MAX and all(0x21 <= byte <= 0x7E for byte in value)


# --- the docs page ------------------------------------------------------------------------------------------------

# BentoML's page with what loaded from elsewhere taken out (Google Tag Manager, the GitHub corner) and Swagger UI's
# online validator badge switched off; the Swagger UI files are the ones BentoML ships and serves at /static_content.
DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Palmer Penguins classifier: API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="./static_content/index.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./docs-init.js" charset="UTF-8"></script>
  </body>
</html>
"""


DOCS_INIT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    validatorUrl: null,
  });
};
"""
DOCS_FILES: dict[str, tuple[bytes, bytes]] = {
    "/": (DOCS_PAGE, b"text/html; charset=utf-8"),
    "/docs-init.js": (DOCS_INIT, b"text/javascript; charset=utf-8"),
}
# What the docs page may load: this origin only (the inline styles and data: images are Swagger UI's own).
DOCS_POLICY = b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


async def _docs_file(send: Callable[..., Any], path: str, head: bool = False) -> None:
    body, content_type = DOCS_FILES[path]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", DOCS_POLICY),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


# --- the exact OpenAPI document -----------------------------------------------------------------------------------

DESCRIPTION = (
    "Species classifiers for Palmer Penguins, trained with scikit-learn and served from the BentoML model store. "
    "Every error is JSON with an `error` message; see each operation's responses. The web page is at `/ui`."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "What went wrong"}},
        "required": ["error"],
    },
    "ValidationErrors": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {
                            "type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                            "description": 'Where: field names and list positions, e.g. ["penguins", 0, "island"]',
                        },
                        "msg": {"type": "string", "description": "What is wrong, with the allowed values or unit"},
                        "type": {"type": "string"},
                    },
                    "required": ["loc", "msg", "type"],
                },
            },
            "field": {"type": "string", "description": "The header or field refused, when not in detail"},
        },
        "required": ["error"],
    },
    "ModelNotServed": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "field": {"type": "string"},
            "allowed": {"type": "array", "items": {"type": "string"}, "description": "The served models' names"},
            "served_tags": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": "string", "description": "Why, when the store holds the model but does not serve it"},
            "fix": {"type": "string", "description": "The call that would serve it, when there is one"},
        },
        "required": ["error", "allowed"],
    },
    "BodyTooLarge": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "limit_bytes": {"type": "integer"}},
        "required": ["error", "limit_bytes"],
    },
    "UnsupportedMediaType": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "accepted": {"type": "array", "items": {"type": "string"}}},
        "required": ["error", "accepted"],
    },
    "Busy": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "retry_after_s": {"type": "integer"}},
        "required": ["error"],
    },
    "Unavailable": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "model": {"type": "string"},
            "not_served": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Penguin models the store holds but does not serve, and why",
            },
        },
        "required": ["error"],
    },
}


def _response(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
    if headers:
        answer["headers"] = headers
    return answer


def exact_spec(
    spec: dict[str, Any], admin_routes: tuple[str, ...] = (), conflict_routes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """BentoML's generated document, made true to what the service answers, for every API operation there is.

    Each POST operation BentoML generated (marked `x-bentoml-name`) declares 400 (its `detail` a list), 413 and 415;
    one that takes input also 429 (bulk limit) and 503 (no model loaded); one with a `model` field 404 (with the
    served names); `admin_routes` 401 with the bearer scheme; `conflict_routes` 409. BentoML's 500 and its string
    `detail` go.
    """
    spec["info"] = {"title": "Palmer Penguins classifier", "version": package_version(), "description": DESCRIPTION}
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(ERROR_SCHEMAS)
    for path, item in spec.get("paths", {}).items():
        operation = item.get("post")
        if not operation or "x-bentoml-name" not in operation:
            continue
        fields, required = _input_properties(operation, schemas)
        if required:  # without it no body at all would be a valid request
            operation["requestBody"]["required"] = True
        responses = {k: v for k, v in operation.get("responses", {}).items() if k == "200"}
        responses["400"] = _response("Invalid input: `detail` names each field and what is wrong", "ValidationErrors")
        responses["413"] = _response("The request body is over the size limit", "BodyTooLarge")
        responses["415"] = _response("The request body is not JSON", "UnsupportedMediaType")
        if fields:
            responses["429"] = _response(
                "Too many bulk requests at once: retry after the time given",
                "Busy",
                {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
            )
            responses["503"] = _response("No model is loaded to answer (train one and reload)", "Unavailable")
        if "model" in fields:
            responses["404"] = _response(
                "The model named is not served: `allowed` lists those that are", "ModelNotServed"
            )
        if path in conflict_routes:
            responses["409"] = _response("The model was saved without explanation data: retrain it", "Error")
        if path in admin_routes:
            responses["401"] = _response(
                "The admin bearer token is missing or wrong",
                "Error",
                {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
            )
            operation["security"] = [{"adminToken": []}]
            components.setdefault("securitySchemes", {})["adminToken"] = {"type": "http", "scheme": "bearer"}
        operation["responses"] = dict(sorted(responses.items()))
    readyz = spec.get("paths", {}).get("/readyz", {}).get("get")
    if readyz is not None:
        readyz.setdefault("responses", {})["503"] = {
            "description": "Not ready: no model loaded yet",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    referenced = json.dumps(spec["paths"])
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):  # BentoML's, now unused
        if f'/{name}"' not in referenced:
            schemas.pop(name, None)
    return spec


def _input_properties(operation: dict[str, Any], schemas: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The input's field names and its required ones."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {})), list(schema.get("required", []))


@cache
def package_version() -> str:
    try:
        return version("penguins")
    except PackageNotFoundError:  # a bento without the package's metadata: read pyproject.toml beside the code
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


# --- bodies -------------------------------------------------------------------------------------------------------


class Bodies:
    """Read each POST body whole before the app does; bound the bulk ones a process works on at once.

    A bulk request beyond `bulk_concurrency` waits its turn (first come, first served) with its body unread: uvicorn
    stops reading a connection once 64 KiB of its body are buffered, so a waiting flooder costs a socket and nothing
    else. Beyond `bulk_queue` waiting, or after waiting half the body timeout (which would close it), it gets 429.
    Answering at once instead let each flooder send its next 10,000-penguin body straight away: draining those
    bodies kept the event loop waiting on the GIL the one admitted request held, and a lone small request waited
    ~100x longer than with the flooders simply held back (docs/reliability.md, Fair share).
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None):
        self.app = app
        self.settings = settings or get_settings()
        self.bulk_in_progress = 0
        self.bulk_waiting: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        bulk = declared is not None and declared.isdigit() and int(declared) >= self.settings.bulk_body_bytes
        if bulk and not await self._take_turn():
            return await self._busy(send)
        try:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left mid-body: nobody to answer, nothing to count as an error
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body", False):
                    break
            if not bulk and size >= self.settings.bulk_body_bytes:  # chunked: known only now
                if not await self._take_turn():
                    return await self._busy(send)
                bulk = True
            body = b"".join(chunks)
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return await receive()  # after the body: a disconnect, whenever it comes
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            if bulk:
                self._end_turn()

    async def _take_turn(self) -> bool:
        """A bulk slot, now or after the requests waiting before this one; False when the queue is full or the
        wait too long."""
        if self.bulk_in_progress < self.settings.bulk_concurrency and not self.bulk_waiting:
            self.bulk_in_progress += 1
            return True
        if len(self.bulk_waiting) >= self.settings.bulk_queue:
            return False
        turn = asyncio.get_running_loop().create_future()
        self.bulk_waiting.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.settings.body_timeout_s / 2)
        finally:
            if not turn.done():  # timed out, or this request was cancelled: give up the place
                self.bulk_waiting.remove(turn)
                turn.cancel()
        return not turn.cancelled()  # done: the slot was handed over by _end_turn

    def _end_turn(self) -> None:
        if self.bulk_waiting:
            self.bulk_waiting.popleft().set_result(None)  # the slot passes to the next in line
        else:
            self.bulk_in_progress -= 1

    async def _busy(self, send: Callable[..., Any]) -> None:
        retry = self.settings.bulk_retry_after_s
        await respond(
            send,
            429,
            {
                "error": f"this server works on {self.settings.bulk_concurrency} bulk request(s) at a time and "
                f"{len(self.bulk_waiting)} are waiting their turn: retry later",
                "retry_after_s": retry,
            },
            [(b"retry-after", str(retry).encode())],
        )


# --- error hints --------------------------------------------------------------------------------------------------


class ErrorHints:
    """Rewrite the message of each refused unknown field in a 400 (pydantic says only "Extra inputs are not
    permitted") to name the field and the closest allowed one, or what to send instead of one-hot columns."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        fields = INPUT_FIELDS.get(scope["path"]) if scope["type"] == "http" else None
        if fields is None:
            return await self.app(scope, receive, send)
        start: dict[str, Any] | None = None

        async def hinted(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message  # held until the body is rewritten (its length changes)
                return
            if start is not None and message["type"] == "http.response.body" and not message.get("more_body"):
                body = _with_hints(message.get("body", b""), fields)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                start = None
                return await send({**message, "body": body})
            await send(message)

        await self.app(scope, receive, hinted)


def _with_hints(body: bytes, top_level: tuple[str, ...]) -> bytes:
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    details = answer.get("detail") if isinstance(answer, dict) else None
    if not isinstance(details, list):
        return body
    changed = False
    for detail in details:
        loc = detail.get("loc") if isinstance(detail, dict) else None
        if detail.get("type") == "extra_forbidden" and loc:
            detail["msg"] = unknown_field_message(str(loc[-1]), top_level if len(loc) == 1 else FEATURES)
            changed = True
    return json.dumps(answer).encode() if changed else body
