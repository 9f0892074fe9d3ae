"""BentoML's per-request timeout (TimeoutMiddleware): the timer is cancelled once the request is answered."""

from __future__ import annotations

import asyncio
from typing import Any

from penguins.adapter.guard import Target, fits, fix, mark

TRAFFIC = "bentoml._internal.server.http.traffic"

RELEASE_REQUEST_TIMERS = fix(
    "release_request_timers",
    "bentoml",
    [
        Target(TRAFFIC, "TimeoutMiddleware.__call__", ("self", "scope", "receive", "send"), uses=("call_later",)),
        Target(TRAFFIC, "TimeoutMiddleware._set_timer_out", ("self", "waiter")),
        Target(TRAFFIC, "TimeoutMiddleware.__init__", ("self", "app", "timeout")),
    ],
    upstream="none filed: docs/upstream.md#release_request_timers",
    what="each request's timeout timer is never cancelled and keeps the request's context alive for the timeout",
)


def release_request_timers() -> None:
    """Cancel the timeout timer of each request when it is answered.

    BentoML's TimeoutMiddleware schedules `call_later(timeout)` per request and never cancels it, so every request's
    context (its tracing span, futures, ...) stays alive for the whole traffic timeout: at 500 req/s and 60 s that
    is ~30,000 requests' objects, and the garbage collector's full passes over them paused the worker for 100-400 ms.
    Same behaviour otherwise: a 504 when no response has started within the timeout. (BentoML's config cannot turn
    the middleware off: `traffic.timeout` must be a positive number.)
    """
    if not fits(RELEASE_REQUEST_TIMERS.name):
        return
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    original = TimeoutMiddleware.__call__
    if getattr(original, "releases_timer", False):
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
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await answer
        finally:
            timer.cancel()

    TimeoutMiddleware.__call__ = mark(__call__, original, "releases_timer")
