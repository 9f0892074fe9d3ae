"""The HTTP metrics, ours: `prometheus_client` series labelled by route template (bounded), and `/metrics`.

BentoML's own HTTP metrics are turned off by its documented config (`metrics.enabled: false`, in
`serving.server_config`); its docs point to `prometheus_client` for custom metrics. Its series were labelled by the
raw request path, so random 404 paths grew memory and `/metrics` without bound. Here every path is labelled by the
template of the route that takes it (a mount's prefix for what is under it), or `<unmatched>` when none does.
`/metrics` renders every process's series in BentoML's multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, which it
sets for its workers), our store and model series included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import anyio.to_thread
import prometheus_client
from prometheus_client import multiprocess

from penguins.errors import Refused
from penguins.http.asgi import send_error
from penguins.http.routing import ASGIApp, RouteTable

UNMATCHED_PATH = "<unmatched>"  # the endpoint label of every path no route takes
PATH = "/metrics"
# Seconds; finer where this service answers (a millisecond or a few), up to the 60 s request timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Series:
    """The three series, made on first use in the worker (multiprocess mode wants them after the fork)."""

    def __init__(self) -> None:
        self.requests = prometheus_client.Counter(
            "penguins_http_requests", "HTTP requests answered", ["endpoint", "http_response_code"]
        )
        self.duration = prometheus_client.Histogram(
            "penguins_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"], buckets=BUCKETS
        )
        self.in_progress = prometheus_client.Gauge(
            "penguins_http_requests_in_progress",
            "HTTP requests being answered",
            ["endpoint"],
            multiprocess_mode="livesum",
        )
        self.children: dict[tuple[str, ...], Any] = {}  # labelled children, looked up once per label set

    def child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


@cache
def _series() -> _Series:
    return _Series()


class Metrics:
    """Outermost of ours: counts and times every HTTP request by route template, and answers `GET /metrics`."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.routes = RouteTable(app)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == PATH:  # ours, not the router's: its other methods are refused here
            if scope["method"] in ("GET", "HEAD"):
                return await _render(send, head=scope["method"] == "HEAD")
            allowed = ["GET", "HEAD"]
            refused = Refused(405, f"{scope['method']} is not allowed on {PATH}", allowed=allowed)
            return await send_error(send, refused, [(b"allow", ", ".join(allowed).encode())])
        route, _ = self.routes.match(scope)
        endpoint = route or UNMATCHED_PATH
        series = _series()
        in_progress = series.child(series.in_progress, endpoint)
        status: int | None = None  # None: no answer started (the client left before one)

        async def counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        in_progress.inc()
        try:
            await self.app(scope, receive, counted)
        except Exception:
            status = status or 500  # Starlette's outermost error middleware answers it 500
            raise
        finally:
            in_progress.dec()
            if status is not None:
                series.child(series.duration, endpoint).observe(time.perf_counter() - started)
                # No method label: the method is the client's to choose, and every label value is a series.
                series.child(series.requests, endpoint, str(status)).inc()


def _latest() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry)
    return prometheus_client.generate_latest()


async def _render(send: Callable[..., Any], head: bool) -> None:
    body = await anyio.to_thread.run_sync(_latest)  # reads every worker's files: not on the event loop
    headers = [
        (b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
