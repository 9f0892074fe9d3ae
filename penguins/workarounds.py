"""Fixes for BentoML 1.4.39's serving internals (`apply`), and for CPython's garbage collector under server load
(`freeze_heap`), run in each worker, never at import.

Each BentoML fix patches one method of a BentoML class, so it reaches the instances BentoML has already built; each
is idempotent. Re-check them when upgrading BentoML.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import threading
from functools import wraps
from typing import Any

# Where `validate_off_the_loop` leaves what BentoML validated, in the request's ASGI scope, for the prediction log.
VALIDATED = "penguins.validated"
VALIDATED_JSON = "penguins.validated_json"
UNMATCHED_PATH = "<unmatched>"  # the metrics' endpoint label for every path no route takes
# Set when the worker begins to shut down (`drain_on_shutdown`): from then on new requests are answered 503.
DRAINING = threading.Event()

logger = logging.getLogger(__name__)


def serve_apis(app: Any, apis: dict[str, Any]) -> None:
    """Make a running BentoML 1.4.39 app serve exactly `apis` (name -> APIMethod) besides the service's own.

    BentoML fixes a service's routes when its app is built (upstream issue #4460: no way to add endpoints to a
    running service). Its ASGI app looks every API up by name at request time, though — the method in
    `service.apis`, the callable on the service instance, the batching dispatcher in its app factory — and
    `/docs.json` and `/schema.json` are generated from `service.apis` on every request. So adding an API is: a
    dispatcher (when batchable), the instance's callable, a new `apis` dict and a new route list, each swapped in whole
    so a request in flight reads either the old or the new one. Call it on the event loop.
    """
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
    if drain_s is not None:
        drain_on_shutdown(drain_s)
    if connections is not None:
        bound_connections(*connections)


def bound_batch_wait(max_wait_ms: float) -> None:
    """Cap the wait BentoML's adaptive batching learns.

    The CorkDispatcher holds a queued request while `0.95 × wait` exceeds its age plus a 1 ms tick, where `wait` is
    the mean queueing time of its last 50 batches. A lone request's measured wait is that held time plus the tick's
    overshoot, so after heavy load `wait` does not decay to zero but settles near 15 ms: a lone client then waits
    that long on every request, for nothing.
    """
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
