"""The one module that touches BentoML's internals (`bentoml._internal`, `_bentoml_impl`, `_bentoml_sdk`): fixes for
BentoML 1.4.39's serving internals (`apply`, `serve_apis`, `spread_connections`), the model store's location
(`model_store_dir`), and a fix for CPython's garbage collector under server load (`freeze_heap`); run in each worker,
never at import.

Each fix is guarded (`misfit`): on a BentoML (or uvicorn) version other than the one it was tested with, or when
what it patches no longer has the shape it was written for, it stays off and logs one warning: the service then
behaves as stock BentoML does (slower, or without per-model routes), never patched blind.

Each fix in `apply` patches one method of a BentoML class (one module function: `publish_alternatives`), so it
reaches the instances BentoML has already built; `serve_apis` swaps APIs into a running app; `spread_connections`
changes no BentoML code, only the listening socket BentoML's worker inherited. Each is idempotent, and names the
BentoML version it was written for (1.4.39) and the upstream issue if there is one. Re-check them when upgrading.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import socket
import sys
import threading
from functools import wraps
from pathlib import Path
from typing import Any

# Where `validate_off_the_loop` leaves what BentoML validated, in the request's ASGI scope, for the prediction log.
VALIDATED = "penguins.validated"
VALIDATED_JSON = "penguins.validated_json"
UNMATCHED_PATH = "<unmatched>"  # the metrics' endpoint label for every path no route takes
# Set when the worker begins to shut down (`drain_on_shutdown`): from then on new requests are answered 503.
DRAINING = threading.Event()

logger = logging.getLogger(__name__)


# The versions every fix below was written for and tested with (tests/test_workarounds.py checks the shapes).
TESTED = {"bentoml": "1.4.39", "uvicorn": "0.54.0"}

# What each fix patches, as the tested versions have it: (distribution, [(module, attribute, parameter names)]).
SHAPES: dict[str, tuple[str, list[tuple[str, str, tuple[str, ...]]]]] = {
    "serve_apis": (
        "bentoml",
        [
            ("_bentoml_impl.server.app", "ServiceAppFactory.api_endpoint_wrapper", ("self", "name", "request")),
            (
                "bentoml._internal.marshal.dispatcher",
                "CorkDispatcher.__init__",
                ("self", "max_latency_in_ms", "max_batch_size", "shared_sema", "fallback", "get_batch_size")
                + ("batch_dim",),
            ),
        ],
    ),
    "bind_api_methods_once": ("bentoml", [("_bentoml_sdk.method", "APIMethod._local_call", ("self", "instance"))]),
    "publish_alternatives": (
        "bentoml",
        [("_bentoml_sdk.method", "_flatten_field", ("schema", "defs", "max_depth", "_depth"))],
    ),
    "keep_requests_whole": (
        "bentoml",
        [("bentoml._internal.marshal.dispatcher", "CorkDispatcher._get_inputs", ("self", "num_batches"))],
    ),
    "send_answers_as_returned": (
        "bentoml",
        [("_bentoml_sdk.io_models", "IOMixin.to_http_response", ("obj", "serde"))],
    ),
    "bound_batch_wait": ("bentoml", [("bentoml._internal.marshal.dispatcher", "Optimizer.trigger_refresh", ("self",))]),
    "release_request_timers": (
        "bentoml",
        [
            (
                "bentoml._internal.server.http.traffic",
                "TimeoutMiddleware.__call__",
                ("self", "scope", "receive", "send"),
            ),
            ("bentoml._internal.server.http.traffic", "TimeoutMiddleware._set_timer_out", ("self", "waiter")),
        ],
    ),
    "label_metrics_by_route": (
        "bentoml",
        [
            (
                "bentoml._internal.server.http.instruments",
                "RunnerTrafficMetricsMiddleware.__call__",
                ("self", "scope", "receive", "send"),
            )
        ],
    ),
    "quiet_client_errors": ("bentoml", [("_bentoml_impl.server.app", "log_exception", ("request", "exc_info"))]),
    "validate_off_the_loop": (
        "bentoml",
        [("_bentoml_impl.serde", "JSONSerde.parse_request", ("self", "request", "cls"))],
    ),
    "drain_on_shutdown": ("uvicorn", [("uvicorn.server", "Server.shutdown", ("self", "sockets"))]),
    "bound_connections": (
        "uvicorn",
        [
            ("uvicorn.protocols.http.httptools_impl", f"HttpToolsProtocol.{name}", params)
            for name, params in (
                ("connection_made", ("self", "transport")),
                ("data_received", ("self", "data")),
                ("on_message_begin", ("self",)),
                ("on_headers_complete", ("self",)),
                ("on_message_complete", ("self",)),
                ("connection_lost", ("self", "exc")),
            )
        ],
    ),
    # Patches nothing; reads the command line BentoML gives its HTTP worker (`--fd N`).
    "spread_connections": ("bentoml", []),
    "model_store_dir": ("bentoml", [("bentoml._internal.configuration.containers", "BentoMLContainer", ())]),
}


def misfit(fix: str) -> str | None:
    """Why `fix` must stay off here (an untested version, or a target of another shape), or None when it fits."""
    import importlib
    import inspect
    from importlib.metadata import version

    distribution, targets = SHAPES[fix]
    installed = version(distribution)
    if installed != TESTED[distribution]:
        return f"written for {distribution} {TESTED[distribution]}, this is {installed}"
    for module_name, attribute, params in targets:
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as error:
            return f"{module_name}.{attribute} is gone ({error})"
        if not params:
            continue
        found = tuple(inspect.signature(target).parameters)
        if found != params:
            return f"{module_name}.{attribute} takes {found}, not {params}"
    return None


@functools.cache  # once per process: the answer, and its warning
def _fits(fix: str) -> bool:
    problem = misfit(fix)
    if problem is not None:
        logger.warning("BentoML workaround %s stays off: %s", fix, problem)
    return problem is None


def model_store_dir() -> Path:
    """BentoML's own model store: $BENTOML_HOME/models (as configured, wherever BENTOML_HOME points)."""
    if not _fits("model_store_dir"):
        return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


# Put in the `Annotated[...]` of an API's output type: BentoML then sends what the API returns as JSON as it is,
# without validating it against that type again (`send_answers_as_returned`).
AS_RETURNED = "penguins: sent as returned"


def serve_apis(app: Any, apis: dict[str, Any]) -> bool:
    """Make a running BentoML 1.4.39 app serve exactly `apis` (name -> APIMethod) besides the service's own.

    BentoML fixes a service's routes when its app is built (upstream issue #4460: no way to add endpoints to a
    running service). Its ASGI app looks every API up by name at request time, though — the method in
    `service.apis`, the callable on the service instance, the batching dispatcher in its app factory — and
    `/docs.json` and `/schema.json` are generated from `service.apis` on every request. So adding an API is: a
    dispatcher (when batchable), the instance's callable, a new `apis` dict and a new route list, each swapped in whole
    so a request in flight reads either the old or the new one. Call it on the event loop. False when it stays off.
    """
    if not _fits("serve_apis"):
        return False
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.marshal.dispatcher import CorkDispatcher
    from bentoml._internal.runner.container import AutoContainer
    from bentoml.exceptions import ServiceUnavailable
    from starlette.routing import Route

    router = app.router
    factory = next(
        r.endpoint.func.__self__
        for r in router.routes
        if isinstance(getattr(r, "endpoint", None), functools.partial)
        and isinstance(getattr(r.endpoint.func, "__self__", None), ServiceAppFactory)
    )
    service, instance = factory.service, factory._service_instance
    own = getattr(factory, "_penguins_own_apis", None)
    if own is None:  # the first call: what the service declared itself
        own = factory._penguins_own_apis = dict(service.apis)
        factory._penguins_added_apis = {}
    before = factory._penguins_added_apis

    def overloaded() -> None:
        raise ServiceUnavailable("process is overloaded")

    for name, method in apis.items():
        if method.batchable and name not in factory.dispatchers:
            factory.dispatchers[name] = CorkDispatcher(
                max_latency_in_ms=method.max_latency_ms,
                max_batch_size=method.max_batch_size,
                fallback=overloaded,
                get_batch_size=functools.partial(AutoContainer.get_batch_size, batch_dim=method.batch_dim[0]),
                batch_dim=method.batch_dim,
            )
        if name not in instance.__dict__:
            local = functools.partial(method.func, instance)
            local.local = local  # what the app calls: `getattr(instance, name).local`
            instance.__dict__[name] = local
    service.apis = {**own, **apis}
    factory._penguins_added_apis = dict(apis)

    kept = [r for r in router.routes if getattr(r, "name", None) not in before]
    new = [
        Route(method.route, functools.partial(factory.api_endpoint_wrapper, name), methods=["POST"], name=name)
        for name, method in apis.items()
    ]
    # After the service's own API routes, before the mounted apps (a mount could match a prefix first).
    at = max((i + 1 for i, r in enumerate(kept) if getattr(r, "name", None) in own), default=len(kept))
    router.routes = [*kept[:at], *new, *kept[at:]]
    for name in before.keys() - apis.keys():
        # A request already queued in its dispatcher still finishes; the callable goes with the route.
        instance.__dict__.pop(name, None)
    return True


def apply(
    max_batch_wait_ms: float,
    big_body_bytes: int | None = None,
    keep_json: bool = True,
    drain_s: float | None = None,
    connections: tuple[float, float, int] | None = None,
) -> None:
    """Every fix below, in this process. `connections`: header and body timeouts (s) and the connection cap."""
    bound_batch_wait(max_batch_wait_ms)
    release_request_timers()
    label_metrics_by_route()
    quiet_client_errors()
    if big_body_bytes is not None:
        validate_off_the_loop(big_body_bytes, keep_json)
    keep_requests_whole()
    send_answers_as_returned()
    publish_alternatives()
    bind_api_methods_once()
    if drain_s is not None:
        drain_on_shutdown(drain_s)
    if connections is not None:
        bound_connections(*connections)


def bind_api_methods_once() -> None:
    """Bind each API method to the service instance once, not on every attribute access.

    BentoML 1.4.39's `APIMethod.__get__` builds a new caller on every access, with `inspect.signature` of the
    function and `functools.wraps`, and the server looks the method up twice per request (the endpoint, then the
    batch): ~7% of a small request's CPU. The caller depends only on the method and the instance, so the instance
    keeps its callers (a cycle through the instance: freed with it by the collector). No upstream issue.
    """
    if not _fits("bind_api_methods_once"):
        return
    from _bentoml_sdk.method import APIMethod

    bind = APIMethod.__dict__["_local_call"]
    if getattr(bind, "binds_once", False):
        return

    def _local_call(self: APIMethod, instance: Any) -> Any:
        callers = getattr(instance, "__dict__", None)
        if callers is None:  # no place to keep it: as BentoML does
            return bind(self, instance)
        per_method = callers.setdefault("_penguins_api_callers", {})
        caller = per_method.get(self.name)
        if caller is None or caller.func is not self.func:
            caller = per_method[self.name] = bind(self, instance)
        return caller

    _local_call.binds_once = True  # type: ignore[attr-defined]
    APIMethod._local_call = _local_call


def publish_alternatives() -> None:
    """Keep an argument's alternatives (`anyOf`) in the OpenAPI document and `/schema.json`.

    BentoML 1.4.39 (`_bentoml_sdk.method._flatten_field`) replaces every `anyOf` by its first option, meant for
    `X | None`: `penguins`, a list of penguins or one list per field, was published as the list alone. An `anyOf` of
    one option besides null is still flattened as before, unless the field says `nullable` (serving.NULLABLE): a
    generated client then accepts the null the service sends. No upstream issue.
    """
    if not _fits("publish_alternatives"):
        return
    from _bentoml_sdk import method

    flatten = method._flatten_field
    if getattr(flatten, "keeps_alternatives", False):
        return

    def _flatten_field(schema: dict, defs: dict, max_depth: int | None = None, _depth: int = 0) -> dict:
        options = schema.get("anyOf")
        if not isinstance(options, list):
            return flatten(schema, defs, max_depth, _depth)
        others = [option for option in options if option != {"type": "null"}]
        if len(others) > 1:
            schema["anyOf"] = [_flatten_field(option, defs, max_depth, _depth) for option in options]
            return schema
        if len(others) == 1 and schema.get("nullable") is True:
            # OpenAPI 3.0's null: `nullable` beside the option, which a $ref cannot have (its siblings are ignored).
            rest = {key: value for key, value in schema.items() if key != "anyOf"}
            option = _flatten_field(dict(others[0]), defs, max_depth, _depth)
            return {**rest, "allOf": [option]} if "$ref" in option else {**option, **rest}
        return flatten(schema, defs, max_depth, _depth)

    _flatten_field.keeps_alternatives = True  # type: ignore[attr-defined]
    method._flatten_field = _flatten_field


def keep_requests_whole() -> None:
    """Never split one request across batches.

    BentoML 1.4.39's CorkDispatcher fills each batch up to `max_batch_size` and splits the request that does not fit
    (bentoml/BentoML#4752, by design): one request of 10,000 penguins became ten 1,000-row batches run one after
    another, each with its own thread hop and model call, ~1.6x the time of one call. Here a request that does not
    fit waits for the next batch, and one larger than `max_batch_size` is a batch of its own: `max_batch_size`
    bounds how many penguins from different requests are combined, not a request.
    """
    if not _fits("keep_requests_whole"):
        return
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    if getattr(CorkDispatcher._get_inputs, "keeps_requests_whole", False):
        return

    def _get_inputs(self: CorkDispatcher, num_batches: int | None = None) -> Any:
        limit = self.max_batch_size if num_batches is None else num_batches
        size = 0
        while self._queue:
            try:
                next_size = self.get_batch_size(self._queue[0].data)
            except Exception:
                next_size = 1
            if size and size + next_size > limit:
                return
            size += next_size
            yield self._queue.popleft()
            if size >= limit:
                return

    _get_inputs.keeps_requests_whole = True  # type: ignore[attr-defined]
    CorkDispatcher._get_inputs = _get_inputs


def send_answers_as_returned() -> None:
    """Send an API's answer as the JSON it is when its output type is marked `AS_RETURNED`.

    For an output typed `list[...]` BentoML 1.4.39 validates the returned list against that type, dumps it to Python
    and then to JSON (`IOMixin.to_http_response`): three passes over an answer our own code built from the model's
    arrays, ~100 ms of a 10,000-penguin request. No upstream issue.
    """
    if not _fits("send_answers_as_returned"):
        return
    from _bentoml_sdk.io_models import IOMixin, IORootModel
    from pydantic_core import to_json
    from starlette.responses import Response

    original = IOMixin.__dict__["to_http_response"]
    if getattr(original, "sends_as_returned", False):
        return
    marked: dict[type, bool] = {}

    def is_marked(cls: type) -> bool:
        if cls not in marked:
            field = getattr(cls, "model_fields", {}).get("root") if issubclass(cls, IORootModel) else None
            marked[cls] = field is not None and AS_RETURNED in field.metadata
        return marked[cls]

    async def to_http_response(cls: type, obj: Any, serde: Any) -> Any:
        if isinstance(obj, list) and getattr(serde, "media_type", None) == "application/json" and is_marked(cls):
            return Response(to_json(obj), media_type="application/json")
        return await original.__func__(cls, obj, serde)

    to_http_response.sends_as_returned = True  # type: ignore[attr-defined]
    IOMixin.to_http_response = classmethod(to_http_response)


def bound_batch_wait(max_wait_ms: float) -> None:
    """Cap the wait BentoML's adaptive batching learns.

    The CorkDispatcher holds a queued request while `0.95 × wait` exceeds its age plus a 1 ms tick, where `wait` is
    the mean queueing time of its last 50 batches. A lone request's measured wait is that held time plus the tick's
    overshoot, so after heavy load `wait` does not decay to zero but settles near 15 ms: a lone client then waits
    that long on every request, for nothing.
    """
    if not _fits("bound_batch_wait"):
        return
    from bentoml._internal.marshal.dispatcher import Optimizer

    learn = getattr(Optimizer.trigger_refresh, "__wrapped__", Optimizer.trigger_refresh)

    @wraps(learn)
    def trigger_refresh(self: Optimizer) -> None:
        learn(self)
        self.wait = min(self.wait, max_wait_ms / 1000)

    Optimizer.trigger_refresh = trigger_refresh


def release_request_timers() -> None:
    """Cancel the timeout timer of each request when it is answered.

    BentoML's TimeoutMiddleware schedules `call_later(timeout)` per request and never cancels it, so every request's
    context (its tracing span, futures, ...) stays alive for the whole traffic timeout: at 500 req/s and 60 s that
    is ~30,000 requests' objects, and the garbage collector's full passes over them paused the worker for 100-400 ms.
    Same behaviour otherwise: a 504 when no response has started within the timeout.
    """
    if not _fits("release_request_timers"):
        return
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if getattr(TimeoutMiddleware.__call__, "releases_timer", False):
        return

    async def __call__(self: TimeoutMiddleware, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict[str, Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        answer = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if answer.cancel():
                from starlette.responses import JSONResponse

                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await answer
        finally:
            timer.cancel()

    __call__.releases_timer = True  # type: ignore[attr-defined]
    TimeoutMiddleware.__call__ = __call__


def label_metrics_by_route() -> None:
    """Label BentoML's HTTP metrics by route, not by raw path (BentoML 1.4.39, RunnerTrafficMetricsMiddleware).

    BentoML labels every series with `scope["path"]`, unknown paths included, and series never expire: 4,000 random
    404 paths took a worker from 272 to 427 MB and one /metrics scrape cost 7 s of CPU. Here the label is the path
    template of the route that takes the request (a mount's prefix for what is under it), or one fixed label for
    every path no route takes; the app below still gets the request's own scope.
    """
    if not _fits("label_metrics_by_route"):
        return
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Metrics

    if getattr(Metrics.__call__, "labels_by_route", False):
        return
    original = Metrics.__call__

    async def __call__(self: Metrics, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await original(self, scope, receive, send)
        table = self.__dict__.get("_route_table")
        if table is None:
            from penguins.guards import RouteTable

            table = self._route_table = RouteTable(self.app)
            self.app = _RealScope(self.app)  # what BentoML's own __call__ passes on gets the real scope back
        label, _ = table.match(scope)
        await original(self, {**scope, "path": label or UNMATCHED_PATH, _REAL_SCOPE: scope}, receive, send)

    __call__.labels_by_route = True  # type: ignore[attr-defined]
    Metrics.__call__ = __call__


_REAL_SCOPE = "penguins.real_scope"


class _RealScope:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope.get(_REAL_SCOPE, scope), receive, send)


def quiet_client_errors() -> None:
    """No traceback in the server log for a client's mistake (BentoML 1.4.39 logs a ~25-line traceback at ERROR for
    every 400): a validation error or a BentoML error below 500 is logged at DEBUG in one line; others as before."""
    if not _fits("quiet_client_errors"):
        return
    import _bentoml_impl.server.app as server_app

    if getattr(server_app.log_exception, "quiet_client_errors", False):
        return
    original = server_app.log_exception

    def log_exception(request: Any, exc_info: Any = True) -> None:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = sys.exc_info()[1]
        client = isinstance(error, ValidationError) or (
            isinstance(error, BentoMLException) and error.error_code.value < 500
        )
        if client:
            logger.debug("%s %s answered %s: %s", request.method, request.url.path, type(error).__name__, error)
            return
        original(request, exc_info)

    log_exception.quiet_client_errors = True  # type: ignore[attr-defined]
    server_app.log_exception = log_exception


def validate_off_the_loop(min_bytes: int, keep_json: bool = True) -> None:
    """Validate a big JSON body in a thread, and keep what was validated (BentoML 1.4.39, JSONSerde.parse_request).

    BentoML validates the body on the event loop: 10,000 penguins took 35-150 ms here, during which no other request
    moved. From `min_bytes` on, it runs in a thread. The validated input is left in the request's scope
    (`VALIDATED`), so that the prediction log writes what was validated, never the raw request text; with `keep_json`
    a big one is also serialised there, in the thread (`VALIDATED_JSON`).
    """
    if not _fits("validate_off_the_loop"):
        return
    from _bentoml_impl.serde import JSONSerde

    original = getattr(JSONSerde.parse_request, "__wrapped__", JSONSerde.parse_request)

    @wraps(original)
    async def parse_request(self: JSONSerde, request: Any, cls: type) -> Any:
        from _bentoml_sdk.io_models import IORootModel

        if issubclass(cls, IORootModel) and cls.multipart_fields:  # BentoML's own path (files by URL)
            return await original(self, request, cls)
        body = await request.body() or b"{}"
        if len(body) < min_bytes:
            model = cls.model_validate_json(body)
        else:
            import anyio.to_thread

            def validate() -> Any:
                validated = cls.model_validate_json(body)
                if keep_json:
                    request.scope[VALIDATED_JSON] = validated.__pydantic_serializer__.to_json(validated)
                return validated

            model = await anyio.to_thread.run_sync(validate)
        request.scope[VALIDATED] = model
        return model

    JSONSerde.parse_request = parse_request


def drain_on_shutdown(drain_s: float) -> None:
    """Drain a worker on SIGTERM before uvicorn's own shutdown (uvicorn 0.54 as BentoML 1.4.39 runs it).

    uvicorn closes its listener and every idle keep-alive connection at once: a request a client sent on such a
    connection at that moment was reset, and connections queued in the listen backlog (BentoML's arbiter keeps the
    socket open until every worker is gone) were reset when it closed. Here, first, for up to `drain_s`: the
    worker keeps accepting, answers every new request 503 with `Connection: close` and Retry-After (the front guard
    reads `DRAINING`), and waits for the requests in flight when the signal came to finish. Then uvicorn's shutdown
    runs, bounded by what is left of `drain_s`.
    """
    if not _fits("drain_on_shutdown"):
        return
    from uvicorn.server import Server

    if getattr(Server.shutdown, "drains", False):
        return
    original = Server.shutdown

    async def shutdown(self: Server, sockets: Any = None) -> None:
        DRAINING.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        in_flight = {task for task in self.server_state.tasks if not task.done()}
        logger.info("draining: %d request(s) in flight, new ones answered 503", len(in_flight))
        while any(not task.done() for task in in_flight) and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))  # a moment for clients to hear "closing"
        if self.config.timeout_graceful_shutdown is None:
            self.config.timeout_graceful_shutdown = max(1, round(deadline - loop.time()))
        await original(self, sockets)

    shutdown.drains = True  # type: ignore[attr-defined]
    Server.shutdown = shutdown


def bound_connections(header_s: float, body_s: float, max_connections: int) -> None:
    """Time out slow requests and cap the connections a worker holds (uvicorn 0.54's httptools protocol, which
    BentoML 1.4.39 runs; BentoML passes uvicorn no such limits, and uvicorn has no header or body timeout).

    A connection must complete a request's headers within `header_s` of its first byte (or of connecting), and its
    body within `body_s` of the headers; otherwise it is closed. Idle keep-alive stays uvicorn's (BentoML's
    `timeout_keep_alive`). Beyond `max_connections`, a new connection closes the least recently active one that has
    no request in progress (a slow or idle one), so a client that is talking keeps its connection: 20,000 slow
    connections made 9 of 10 normal requests time out.
    """
    if not _fits("bound_connections"):
        return
    from collections import OrderedDict
    from itertools import islice

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol

    if getattr(Protocol, "bounded", False):
        return
    made, received, lost = Protocol.connection_made, Protocol.data_received, Protocol.connection_lost
    begun, headed, completed = Protocol.on_message_begin, Protocol.on_headers_complete, Protocol.on_message_complete

    def arm(self: Protocol, seconds: float) -> None:
        disarm(self)
        self._deadline = self.loop.call_later(seconds, expire, self)

    def disarm(self: Protocol) -> None:
        timer = getattr(self, "_deadline", None)
        if timer is not None:
            timer.cancel()
            self._deadline = None

    def expire(self: Protocol) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # too slow to send its request: nobody is waiting for an answer

    def by_activity(self: Protocol) -> OrderedDict:
        state = self.server_state
        if not hasattr(state, "by_activity"):
            state.by_activity = OrderedDict()
        return state.by_activity

    def connection_made(self: Protocol, transport: Any) -> None:
        made(self, transport)
        active = by_activity(self)
        active[self] = None
        arm(self, header_s)
        if len(active) > max_connections:
            idle = next(
                (
                    other
                    for other in islice(active, 256)  # the least recently active first
                    if other is not self and (other.cycle is None or other.cycle.response_complete)
                ),
                None,
            )
            if idle is None:
                transport.close()  # every other connection is busy: this one waits its turn elsewhere
            else:
                active.pop(idle, None)
                idle.transport.close()

    def data_received(self: Protocol, data: bytes) -> None:
        active = by_activity(self)
        if self in active:
            active.move_to_end(self)
        received(self, data)

    def on_message_begin(self: Protocol) -> None:
        begun(self)
        arm(self, header_s)

    def on_headers_complete(self: Protocol) -> None:
        headed(self)
        arm(self, body_s)

    def on_message_complete(self: Protocol) -> None:
        completed(self)
        disarm(self)

    def connection_lost(self: Protocol, exc: Exception | None) -> None:
        disarm(self)
        by_activity(self).pop(self, None)
        lost(self, exc)

    for function in (connection_made, data_received, on_message_begin, on_headers_complete, on_message_complete):
        setattr(Protocol, function.__name__, function)
    Protocol.connection_lost = connection_lost
    Protocol.bounded = True  # type: ignore[attr-defined]


def freeze_heap() -> None:
    """Keep what the worker has loaded so far (libraries, models) out of every later garbage collection.

    Under load, in-flight requests outlive CPython's young generations, so their objects pile up towards a full
    collection every few seconds, and each walked the whole heap: ~220,000 start-up objects, ~250 ms a pass on this
    machine, which made p99 at concurrency 32 ~300 ms. Frozen (gc.freeze), a full pass walks only what came since.
    Loaded models hold no reference cycles, so the models a reload replaces are still freed (a test checks it).
    """
    gc.collect()
    gc.freeze()


def spread_connections(worker_index: int | None) -> bool:
    """Give every worker but the first its own listening socket on the server's address, so that the kernel spreads
    new connections over the workers (SO_REUSEPORT); True when this worker took one.

    BentoML 1.4.39's process manager opens one listening socket and every worker accepts from it (upstream issue
    bentoml/BentoML#5426, open). uvicorn on uvloop accepts every pending connection each time it wakes, so the
    worker that wakes first takes a whole burst of new connections and keeps them while they stay open: a load
    generator's 32 keep-alive connections landed 32/0, 14/18 and 1/31 on two workers, and a second worker served
    0.93x one worker on average. With a socket per worker in one SO_REUSEPORT group the kernel picks a socket per
    connection by a hash of its addresses.

    The first worker keeps the shared socket (the process manager holds it, so connections routed to it wait while
    that worker restarts); the others bind their own and put it in place of the inherited descriptor before uvicorn
    starts listening on it. Call it last in the worker's start-up: from its `listen` on, the kernel routes
    connections to this worker. Connections still queued on a worker's own socket when that worker exits are reset.
    """
    fd = _inherited_listener()
    if fd is None or not _fits("spread_connections"):
        return False
    with socket.socket(fileno=os.dup(fd)) as shared:
        if shared.type != socket.SOCK_STREAM or shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        # On the shared socket itself (all workers hold it): the sockets bound below may join it on its port.
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if not worker_index or worker_index == 1:
            return False
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(shared.getsockname())
            own.listen(_argument("--backlog", 2048))
            os.dup2(own.fileno(), fd)  # the inherited number now names this worker's socket; uvicorn listens on it
        except OSError as error:  # keep the shared socket: the old, uneven behaviour, but serving
            logger.warning("worker %s keeps the shared listening socket: %s", worker_index, error)
            return False
        finally:
            own.close()
    return True


def _inherited_listener() -> int | None:
    """The listening socket BentoML 1.4.39 hands its HTTP worker (`python -m _bentoml_impl.worker.service --fd N`)."""
    if not sys.argv or not sys.argv[0].replace(os.sep, "/").endswith("_bentoml_impl/worker/service.py"):
        return None  # not a BentoML HTTP worker (in-process tests, a dependency service over a Unix socket, ...)
    fd = _argument("--fd", None)
    if fd is None:
        return None
    try:
        with socket.socket(fileno=os.dup(fd)) as candidate:
            listening = candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return None
    return fd if listening else None


def _argument(flag: str, default: int | None) -> int | None:
    arguments = sys.argv[1:]
    for i, argument in enumerate(arguments):
        if argument == flag and i + 1 < len(arguments) and arguments[i + 1].isdigit():
            return int(arguments[i + 1])
        if argument.startswith(flag + "=") and argument.split("=", 1)[1].isdigit():
            return int(argument.split("=", 1)[1])
    return default
