"""uvicorn as BentoML runs it (BentoML passes it no limits): drain on SIGTERM, and bounds for slow clients."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from itertools import islice
from typing import Any

from penguins.adapter.guard import Target, fits, fix, mark

logger = logging.getLogger("penguins.adapter")

# Set when the worker begins to shut down (`drain_on_shutdown`): from then on new requests are answered 503.
DRAINING = threading.Event()
HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
PROTOCOL_HOOKS = (
    ("connection_made", ("self", "transport")),
    ("data_received", ("self", "data")),
    ("on_message_begin", ("self",)),
    ("on_headers_complete", ("self",)),
    ("on_message_complete", ("self",)),
    ("connection_lost", ("self", "exc")),
)

DRAIN_ON_SHUTDOWN = fix(
    "drain_on_shutdown",
    "uvicorn",
    [
        Target("uvicorn.server", "Server.shutdown", ("self", "sockets"), uses=("timeout_graceful_shutdown",)),
        Target("uvicorn.server", "ServerState.__init__", ("self",), uses=("tasks",)),
    ],
    upstream="none filed: docs/upstream.md#drain_on_shutdown",
    what="SIGTERM resets idle keep-alive connections and the listen backlog at once",
)
BOUND_CONNECTIONS = fix(
    "bound_connections",
    "uvicorn",
    [
        *(Target(HTTPTOOLS, f"HttpToolsProtocol.{name}", params) for name, params in PROTOCOL_HOOKS),
        Target(HTTPTOOLS, "HttpToolsProtocol", uses=("cycle", "transport", "server_state", "loop")),
        Target(HTTPTOOLS, "RequestResponseCycle", uses=("response_complete",)),
    ],
    upstream="Kludex/uvicorn#157 (closed without request timeouts); docs/upstream.md#bound_connections",
    what="no header or body timeout and no connection cap: slow clients hold a worker's connections",
)


def drain_on_shutdown(drain_s: float) -> None:
    """Drain a worker on SIGTERM before uvicorn's own shutdown.

    uvicorn closes its listener and every idle keep-alive connection at once: a request a client sent on such a
    connection at that moment was reset, and connections queued in the listen backlog (BentoML's arbiter keeps the
    socket open until every worker is gone) were reset when it closed. Here, first, for up to `drain_s`: the
    worker keeps accepting, answers every new request 503 with `Connection: close` and Retry-After (the front guard
    reads `DRAINING`), and waits for the requests in flight when the signal came to finish. Then uvicorn's shutdown
    runs, bounded by what is left of `drain_s`.
    """
    if not fits(DRAIN_ON_SHUTDOWN.name):
        return
    from uvicorn.server import Server

    original = Server.shutdown
    if getattr(original, "drains", False):
        return

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

    Server.shutdown = mark(shutdown, original, "drains")


def bound_connections(header_s: float, body_s: float, max_connections: int) -> None:
    """Time out slow requests and cap the connections a worker holds (uvicorn's httptools protocol, which BentoML
    runs; BentoML passes uvicorn no such limits, and uvicorn has no header or body timeout).

    A connection must complete a request's headers within `header_s` of its first byte (or of connecting), and its
    body within `body_s` of the headers; otherwise it is closed. Idle keep-alive stays uvicorn's (BentoML's
    `timeout_keep_alive`). Beyond `max_connections`, a new connection closes the least recently active one that has
    no request in progress (a slow or idle one), so a client that is talking keeps its connection: 20,000 slow
    connections made 9 of 10 normal requests time out.
    """
    if not fits(BOUND_CONNECTIONS.name):
        return
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol

    if getattr(Protocol, "bounded", False):
        return
    made, received, lost = Protocol.connection_made, Protocol.data_received, Protocol.connection_lost
    begun, headed, completed = Protocol.on_message_begin, Protocol.on_headers_complete, Protocol.on_message_complete

    def connection_made(self: Protocol, transport: Any) -> None:
        made(self, transport)
        active = _by_activity(self)
        active[self] = None
        _arm(self, header_s)
        _make_room(self, active, transport, max_connections)

    def data_received(self: Protocol, data: bytes) -> None:
        active = _by_activity(self)
        if self in active:
            active.move_to_end(self)
        received(self, data)

    def on_message_begin(self: Protocol) -> None:
        begun(self)
        _arm(self, header_s)

    def on_headers_complete(self: Protocol) -> None:
        headed(self)
        _arm(self, body_s)

    def on_message_complete(self: Protocol) -> None:
        completed(self)
        _disarm(self)

    def connection_lost(self: Protocol, exc: Exception | None) -> None:
        _disarm(self)
        _by_activity(self).pop(self, None)
        lost(self, exc)

    originals = {"connection_made": made, "data_received": received, "connection_lost": lost}
    originals |= {"on_message_begin": begun, "on_headers_complete": headed, "on_message_complete": completed}
    functions = (connection_made, data_received, on_message_begin, on_headers_complete, on_message_complete)
    _install(Protocol, {function: originals[function.__name__] for function in functions})
    Protocol.connection_lost = mark(connection_lost, lost, "bounds")
    Protocol.bounded = True  # type: ignore[attr-defined]


# What bound_connections' protocol methods share: a connection's deadline, and the worker's connections in order of
# their last activity.


def _arm(protocol: Any, seconds: float) -> None:
    _disarm(protocol)
    protocol._deadline = protocol.loop.call_later(seconds, _expire, protocol)


def _disarm(protocol: Any) -> None:
    timer = getattr(protocol, "_deadline", None)
    if timer is not None:
        timer.cancel()
        protocol._deadline = None


def _expire(protocol: Any) -> None:
    protocol._deadline = None
    if not protocol.transport.is_closing():
        protocol.transport.close()  # too slow to send its request: nobody is waiting for an answer


def _by_activity(protocol: Any) -> OrderedDict:
    state = protocol.server_state
    if not hasattr(state, "by_activity"):
        state.by_activity = OrderedDict()
    return state.by_activity


def _make_room(protocol: Any, active: OrderedDict, transport: Any, max_connections: int) -> None:
    """Beyond `max_connections`, close the least recently active one with no request in progress, or this one."""
    if len(active) <= max_connections:
        return
    idle = next(
        (
            other
            for other in islice(active, 256)  # the least recently active first
            if other is not protocol and (other.cycle is None or other.cycle.response_complete)
        ),
        None,
    )
    if idle is None:
        transport.close()  # every other connection is busy: this one waits its turn elsewhere
    else:
        active.pop(idle, None)
        idle.transport.close()


def _install(protocol_class: type, replacements: dict) -> None:
    """Each replacement in place of the method of its name, marked with the original it wraps."""
    for function, original in replacements.items():
        setattr(protocol_class, function.__name__, mark(function, original, "bounds"))
