"""What the service answers besides predictions (listing, reload report, errors), and the ASGI gateway that
guards its routes before BentoML parses a byte."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from penguins import workarounds
from penguins.contract import Prediction, penguins_field
from penguins.predlog import PredictionLog, worker_index
from penguins.settings import Settings, get_settings
from penguins.store import Change, Failure, LoadedModel, Registry, Snapshot, default_store_dir, endpoint_name

logger = logging.getLogger(__name__)

# The endpoints' input and output types (also used by the benchmark's no-op service, to compare like with like).
Penguins = penguins_field(get_settings().max_penguins)
# An explicit media type: without it BentoML 1.4.39 rebuilds the JSON schema of a list output on every response
# just to find out it is JSON (~20% of a small request's CPU). Our answers are built from the model's arrays: they
# are sent as returned, not validated again (workarounds.send_answers_as_returned).
Predictions = Annotated[list[Prediction], ContentType("application/json"), workarounds.AS_RETURNED]
# BentoML 1.4.39 flattens an optional top-level argument to its first `anyOf` branch, so the OpenAPI document would
# say `type: string, default: null` (invalid); `nullable` keeps the published schema true to what the API accepts.
ModelName = Annotated[
    str | None,
    Field(
        description="A served model's name or algorithm; omit for the best by CV accuracy",
        json_schema_extra={"nullable": True},
    ),
]

TRAIN_HINT = "train one (python train.py) and call reload"


def server_config(settings: Settings) -> dict[str, Any]:
    """The BentoML service configuration our settings make (the benchmark's no-op ceiling uses it too)."""
    config: dict[str, Any] = {
        "workers": settings.workers,
        "threads": settings.threads,
        "traffic": {"timeout": 60},
        "logging": {"access": {"enabled": settings.access_log}},
    }
    if not settings.trace_requests:
        # BentoML 1.4 always installs its tracing middleware; an excluded URL passes through it untouched.
        config["tracing"] = {"excluded_urls": ".*"}
    if settings.cors_origins:
        config["http"] = {"cors": {"enabled": True, "access_control_allow_origins": settings.cors_origins}}
    return config


@cache
def get_registry() -> Registry:
    """The worker's one registry, made on first use (never at import)."""
    return Registry(default_store_dir(), compiled=get_settings().compiled)


class FailureInfo(BaseModel):
    name: str
    tag: str | None
    reason: str


class ModelInfo(BaseModel):
    name: str
    tag: str
    algorithm: str
    default: bool = Field(description="Used by classify when no model is named")
    route: str | None = Field(description="Its own endpoint, or null when it was first saved after start-up")
    predictor: str = Field(description="onnx (compiled at save time) or sklearn")
    trained_at: str | None
    metrics: dict[str, Any]


class RejectedInfo(BaseModel):
    name: str
    tag: str
    algorithm: str
    trained_at: str | None
    metrics: dict[str, Any]
    gate: dict[str, Any] = Field(description="The promotion gate's decision: scores compared, tolerance, reason")


class ModelListing(BaseModel):
    default: str | None
    models: list[ModelInfo]
    failures: list[FailureInfo]
    rejected: list[RejectedInfo] = Field(
        default_factory=list, description="Versions kept in the store but not served: the promotion gate rejected them"
    )


class ReloadReport(BaseModel):
    added: list[str]
    updated: list[dict[str, str]]
    removed: list[str]
    failed: list[FailureInfo]
    serving: list[str]
    default: str | None


METRIC_KEYS = (
    "cv_accuracy_mean",
    "cv_accuracy_std",
    "test_accuracy",
    "macro_f1",
    "confusion_matrix",
    "classes",
)


def failures(items: tuple[Failure, ...] | list[Failure]) -> list[FailureInfo]:
    return [FailureInfo(name=f.name, tag=f.tag, reason=f.reason) for f in items]


def listing(snapshot: Snapshot, routes: dict[str, str]) -> ModelListing:
    best = snapshot.best()

    def info(model: LoadedModel) -> ModelInfo:
        return ModelInfo(
            name=model.name,
            tag=model.tag,
            algorithm=model.algorithm,
            default=model is best,
            route=routes.get(model.name),
            predictor=model.predictor.kind,
            trained_at=model.metadata.get("trained_at"),
            metrics={k: model.metadata[k] for k in METRIC_KEYS if k in model.metadata},
        )

    return ModelListing(
        default=best.tag if best else None,
        models=[info(m) for m in snapshot.models.values()],
        failures=failures(snapshot.failures),
        rejected=[
            RejectedInfo(
                name=r.name,
                tag=r.tag,
                algorithm=r.algorithm,
                trained_at=r.metadata.get("trained_at"),
                metrics={k: r.metadata[k] for k in METRIC_KEYS if k in r.metadata},
                gate=r.metadata.get("gate", {}),
            )
            for r in snapshot.rejected
        ],
    )


def report(change: Change, snapshot: Snapshot) -> ReloadReport:
    best = snapshot.best()
    return ReloadReport(
        added=change.added,
        updated=change.updated,
        removed=change.removed,
        failed=failures(change.failed),
        serving=change.serving,
        default=best.tag if best else None,
    )


def error_body(status: int, message: str, **extra: Any) -> tuple[int, bytes]:
    return status, json.dumps({"error": message, **extra}).encode()


def resolve(snapshot: Snapshot, requested: str | None) -> LoadedModel | tuple[int, bytes]:
    """The model a request asked for (name, algorithm or exact tag), the default one, or an error body."""
    if not snapshot.models:
        return error_body(503, f"no penguin model is loaded: {TRAIN_HINT}")
    if requested is None:
        return snapshot.best()  # type: ignore[return-value]
    name, _, version = requested.partition(":")
    for model in snapshot.models.values():
        if name in (model.name, model.algorithm) and (not version or model.tag == f"{model.name}:{version}"):
            return model
    return error_body(
        404,
        f"model {requested!r} is not served",
        field="model",
        allowed=[m.name for m in snapshot.models.values()],
        served_tags=[m.tag for m in snapshot.models.values()],
    )


def resolve_explainable(snapshot: Snapshot, requested: str | None) -> LoadedModel | tuple[int, bytes]:
    """`resolve`, and a 409 error body when the model was saved without explanation data."""
    chosen = resolve(snapshot, requested)
    if not isinstance(chosen, tuple) and chosen.explainer is None:
        return error_body(409, f"model {chosen.tag} was saved without explanation data: retrain it")
    return chosen


def typed_routes(algorithms: list[str]) -> dict[str, str]:
    """Model name -> its own route, for the algorithms given endpoints at start-up."""
    from penguins.store import model_name

    return {model_name(a): f"/{endpoint_name(a)}" for a in algorithms}


class Gateway:
    """Pure ASGI middleware in front of BentoML's routes.

    - catches the worker up with a reload another worker did (one stat() per request otherwise);
    - refuses bodies over the configured size from Content-Length, and while streaming, before parsing;
    - answers 503 on a per-model route whose model is not loaded (the batched endpoint itself cannot answer one
      request of a batch with an error of its own);
    - requires the admin bearer token, when configured, on state-changing routes;
    - writes the prediction log, per request even inside a batch, before the response's last byte is sent.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        model_routes: dict[str, str],
        admin_routes: tuple[str, ...] = ("/reload",),
        settings: Settings | None = None,
    ):
        self.app = app
        self.route_models = {route: name for name, route in model_routes.items()}
        self.prediction_routes = {"/classify", *self.route_models}
        self.admin_routes = admin_routes
        self.settings = settings or get_settings()
        token = self.settings.admin_token
        self.token = token.get_secret_value().encode() if token else None
        self._log: PredictionLog | None = None

    def prediction_log(self) -> PredictionLog | None:
        # Made on first use, in the worker (the worker index is known only there), never at import.
        if self._log is None and self.settings.log_predictions:
            directory = self.settings.log_dir or default_store_dir().parent / "prediction-logs"
            try:
                self._log = PredictionLog(
                    directory, self.settings.log_max_bytes, self.settings.log_backups, worker_index()
                )
            except OSError as error:  # an unwritable log must not turn answers into 500s: say so once, serve on
                logger.error("prediction log disabled: cannot write to %s (%s)", directory, error)
                self.settings = self.settings.model_copy(update={"log_predictions": False})
        return self._log

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        headers = dict(scope["headers"])

        if self.token is not None and path in self.admin_routes:
            supplied = headers.get(b"authorization", b"")
            if not hmac.compare_digest(supplied, b"Bearer " + self.token):
                return await _respond(
                    send,
                    *error_body(401, f"{path} needs the admin bearer token"),
                    extra_headers=[(b"www-authenticate", b"Bearer")],
                )

        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _respond(send, *error_body(413, f"request body over {limit} bytes", limit_bytes=limit))

        registry = get_registry()
        if registry.is_stale():
            import anyio

            await anyio.to_thread.run_sync(registry.sync)

        name = self.route_models.get(path)
        if name is not None and name not in registry.snapshot.models:
            return await _respond(send, *error_body(503, f"model {name} is not loaded: {TRAIN_HINT}", model=name))

        if declared is None and scope.get("method") == "POST":
            # No Content-Length (chunked): read it here, bounded, and replay it; BentoML buffers it whole anyway.
            body = await _read_bounded(receive, limit)
            if body is None:
                return await _respond(send, *error_body(413, f"request body over {limit} bytes", limit_bytes=limit))
            receive = _replay(body, receive)
        log = self.prediction_log() if path in self.prediction_routes else None
        if log is not None:
            receive, send = _recorded(scope, receive, send, log, headers)
        await self.app(scope, receive, send)


def _recorded(scope, receive, send, log: PredictionLog, headers: dict[bytes, bytes]):
    """Wrap receive/send to keep copies of both bodies; log a 200 before its final body message goes out."""
    request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
    started = time.perf_counter()
    request_chunks: list[bytes] = []
    response_chunks: list[bytes] = []
    status = 0

    async def receive_recorded() -> dict[str, Any]:
        message = await receive()
        if message["type"] == "http.request":
            request_chunks.append(message.get("body", b""))
        return message

    async def send_recorded(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
        elif message["type"] == "http.response.body" and status == 200:
            response_chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                log.write(
                    request_id,
                    scope["path"],
                    b"".join(request_chunks),
                    b"".join(response_chunks),
                    time.perf_counter() - started,
                )
        await send(message)

    return receive_recorded, send_recorded


async def _read_bounded(receive: Callable[..., Any], limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable[..., Any]) -> Callable[..., Any]:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()  # what comes after the body: a disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _respond(send: Callable[..., Any], status: int, body: bytes, extra_headers: list | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
