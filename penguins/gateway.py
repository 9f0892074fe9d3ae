"""The ASGI gateway in front of BentoML's routes: it keeps the worker on the latest snapshot and its per-model
routes, refuses what must not reach BentoML (no admin token, a body too large, a model not served) and writes the
prediction log."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from penguins.adapter import VALIDATED, VALIDATED_JSON
from penguins.errors import Refused
from penguins.http.asgi import send_error
from penguins.names import MODEL_ROUTE_PREFIX, default_store_dir
from penguins.predlog import PredictionLog
from penguins.registry import get_registry
from penguins.replica import replica_name, worker_index
from penguins.routes import ModelRoutes
from penguins.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class Gateway:
    """Pure ASGI middleware in front of BentoML's routes.

    - catches the worker up with a reload another worker did (one stat() per request otherwise), and makes the
      app's per-model routes follow what the worker serves (penguins.routes);
    - refuses a body whose Content-Length is over the configured size (one without is bounded as it is read, in
      penguins.http.admission);
    - answers a per-model route of a model that is not served with a JSON 404 naming the served ones (503 when none
      is), before BentoML would answer a text/plain 404;
    - requires the admin bearer token, when configured, on state-changing routes;
    - writes the prediction log, per request even inside a batch, before the response's last byte is sent.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        admin_routes: tuple[str, ...] = ("/reload",),
        settings: Settings | None = None,
    ):
        self.app = app
        self.admin_routes = admin_routes
        self.settings = settings or get_settings()
        self.routes = ModelRoutes(self.settings)
        token = self.settings.admin_token
        self.token = token.get_secret_value().encode() if token else None
        self._log: PredictionLog | None = None
        self._log_wanted = self.settings.log_predictions  # off for good once the log cannot be written

    def prediction_log(self) -> PredictionLog | None:
        # Made on first use, in the worker (the worker index is known only there), never at import.
        if self._log is None and self._log_wanted:
            directory = self.settings.log_dir or default_store_dir().parent / "prediction-logs"
            try:
                self._log = PredictionLog(
                    directory, self.settings.log_max_bytes, self.settings.log_backups, worker_index(), replica_name()
                )
            except OSError as error:  # an unwritable log must not turn answers into 500s: say so once, serve on
                logger.error("prediction log disabled: cannot write to %s (%s)", directory, error)
                self._log_wanted = False
        return self._log

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        headers = dict(scope["headers"])

        if self.token is not None and path in self.admin_routes:
            supplied = headers.get(b"authorization", b"")
            if not hmac.compare_digest(supplied, b"Bearer " + self.token):
                refused = Refused(401, f"{path} needs the admin bearer token")
                return await send_error(send, refused, [(b"www-authenticate", b"Bearer")])

        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await send_error(send, Refused(413, f"request body over {limit} bytes", limit_bytes=limit))

        registry = get_registry()
        if registry.is_stale():
            await anyio.to_thread.run_sync(registry.sync)
        snapshot = registry.snapshot
        self.routes.follow(scope["app"], snapshot)
        typed = path in self.routes.by_route
        if not typed and path.startswith(MODEL_ROUTE_PREFIX):
            requested = path.removeprefix(MODEL_ROUTE_PREFIX).replace("_", "-")[:80]
            return await send_error(send, snapshot.not_served(requested))

        predicts = scope["method"] == "POST" and (typed or path == "/classify")  # not a CORS preflight, say
        log = self.prediction_log() if predicts else None
        if log is not None:
            receive, send = _recorded(scope, receive, send, log, headers)
        await self.app(scope, receive, send)


def _recorded(scope, receive, send, log: PredictionLog, headers: dict[bytes, bytes]):
    """Wrap send to keep a copy of the response body; log a 200 before its final body message goes out, with the
    input BentoML validated (never the raw request text: it may be anything that parsed)."""
    request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex  # refused unless ASCII
    started = time.perf_counter()
    response_chunks: list[bytes] = []
    status = 0

    async def send_recorded(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
        elif message["type"] == "http.response.body" and status == 200:
            response_chunks.append(message.get("body", b""))
            validated = None if message.get("more_body", False) else _validated_json(scope)
            if validated is not None:  # the last body message of an answer to input BentoML validated
                log.write(
                    request_id, scope["path"], validated, b"".join(response_chunks), time.perf_counter() - started
                )
        await send(message)

    return receive, send_recorded


def _validated_json(scope: dict[str, Any]) -> bytes | None:
    serialised = scope.get(VALIDATED_JSON)
    if serialised is not None:
        return serialised
    validated = scope.get(VALIDATED)
    # warnings=False: columns arrive as PenguinRows (one tuple per penguin), written as lists, as validated
    return None if validated is None else validated.__pydantic_serializer__.to_json(validated, warnings=False)
