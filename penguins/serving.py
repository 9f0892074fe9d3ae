"""What the service answers besides predictions (listing, reload report, errors), and the ASGI gateway that
guards its routes before BentoML parses a byte."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from penguins import adapter
from penguins.adapter import VALIDATED, VALIDATED_JSON
from penguins.contract import Prediction, penguins_field
from penguins.errors import ServingError
from penguins.loaded import LoadedModel
from penguins.names import default_store_dir, route_of
from penguins.predlog import PredictionLog, worker_index
from penguins.refresh import Change
from penguins.registry import Registry
from penguins.replica import ReplicaStatus, replica_name
from penguins.routes import ModelRoutes
from penguins.scan import Failure, Skipped
from penguins.settings import Settings, get_settings
from penguins.signals import Signal
from penguins.snapshot import Snapshot
from penguins.upstream import RepositoryStatus

logger = logging.getLogger(__name__)

# The endpoints' input and output types (also used by the benchmark's no-op service, to compare like with like).
Penguins = penguins_field(get_settings().max_penguins)
# An explicit media type: without it BentoML 1.4.39 rebuilds the JSON schema of a list output on every response
# just to find out it is JSON (~20% of a small request's CPU). Our answers are built from the model's arrays: they
# are sent as returned, not validated again (adapter.answers.send_answers_as_returned).
Predictions = Annotated[list[Prediction], ContentType("application/json"), adapter.AS_RETURNED]
# BentoML 1.4.39 flattens an optional top-level argument to its first `anyOf` branch, so the OpenAPI document would
# say `type: string, default: null` (invalid); `nullable` keeps the published schema true to what the API accepts.
ModelName = Annotated[
    str | None,
    Field(
        description="A served model's name or algorithm; omit for the best by CV accuracy",
        json_schema_extra={"nullable": True},
    ),
]


# BentoML publishes `X | None` as X alone (it flattens the anyOf): this keeps null allowed in the document.
NULLABLE = {"nullable": True}


def server_config(settings: Settings) -> dict[str, Any]:
    """The BentoML service configuration our settings make (the benchmark's no-op ceiling uses it too)."""
    config: dict[str, Any] = {
        "workers": settings.workers,
        "threads": settings.threads,
        "traffic": {"timeout": 60},
        "logging": {"access": {"enabled": settings.access_log}},
        # BentoML's HTTP metrics labelled series by raw path (unbounded): ours replace them (penguins.http.metrics).
        "metrics": {"enabled": False},
    }
    if not settings.trace_requests:
        # BentoML 1.4 always installs its tracing middleware; an excluded URL passes through it untouched.
        config["tracing"] = {"excluded_urls": ".*"}
    if settings.cors_origins:
        config["http"] = {
            "cors": {
                "enabled": True,
                "access_control_allow_origins": settings.cors_origins,
                # Starlette's defaults allow GET alone and no request headers: a browser's JSON POST needs these.
                "access_control_allow_methods": ["GET", "POST"],
                "access_control_allow_headers": ["authorization", "content-type", "x-request-id"],
                "access_control_expose_headers": ["x-request-id"],
            }
        }
    return config


@cache
def get_registry() -> Registry:
    """The worker's one registry, made on first use (never at import)."""
    from penguins import repository

    return Registry(default_store_dir(), compiled=get_settings().compiled, repository=repository.configured())


class FailureInfo(BaseModel):
    name: str
    tag: str | None
    reason: str


class ModelInfo(BaseModel):
    name: str
    tag: str
    algorithm: str
    default: bool = Field(description="Used by classify when no model is named")
    route: str = Field(description="Its own endpoint (POST), which answers as soon as the model is served")
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


class SkippedInfo(BaseModel):
    name: str
    tag: str | None
    reason: str
    fix: str = Field(description="The call that would serve it")


class RepositoryInfo(BaseModel):
    url: str = Field(description="PENGUINS_MODEL_REPOSITORY")
    reachable: bool | None = Field(description="As this worker last saw it; null before it first asked")
    unreachable_since: str | None
    error: str | None
    last_pull: str | None = Field(description="When this worker last fetched what the local store lacked")
    incomplete: list[str] = Field(description="Versions uploaded without a manifest (in progress or interrupted)")
    store_error: str | None = Field(description="Why nothing could be pulled into the local store (read-only)")
    signal_pending: bool = Field(description="A reload's signal could not be written yet; retried periodically")


class ReplicaInfo(BaseModel):
    name: str = Field(description="PENGUINS_REPLICA_NAME, else the host (container) name")
    worker: int | None
    store: str
    sync_interval_seconds: float | None = Field(description="How often this worker checks the signals by itself")
    last_check: str | None
    signal_error: str | None = Field(description="The reload signal could not be read or written: why")


class SignalFailure(BaseModel):
    where: str
    reason: str


class SignalInfo(BaseModel):
    reaches: str = Field(description="Who this reload reached: every replica, those sharing the store, or fewer")
    written: list[str] = Field(description="store (the shared store), server (this server's workers), repository")
    failed: list[SignalFailure]
    pending: bool = Field(description="The repository's signal is written by the periodic check once it answers")


class ModelListing(BaseModel):
    default: str | None
    models: list[ModelInfo]
    failures: list[FailureInfo]
    rejected: list[RejectedInfo] = Field(
        default_factory=list, description="Versions kept in the store but not served: the promotion gate rejected them"
    )
    skipped: list[SkippedInfo] = Field(
        default_factory=list, description="Penguin-named models in the store that are not served, and why"
    )
    replica: ReplicaInfo | None = Field(
        default=None, description="Which replica and worker answered, and its sync", json_schema_extra=NULLABLE
    )
    repository: RepositoryInfo | None = Field(
        default=None, description="The model repository, when one is set", json_schema_extra=NULLABLE
    )
    fixes: adapter.AdapterStatus | None = Field(
        default=None,
        description="Which fixes to BentoML's internals are on in this worker, why any is off, and the versions",
        json_schema_extra=NULLABLE,
    )


class ReloadReport(BaseModel):
    added: list[str]
    updated: list[dict[str, str]]
    removed: list[str]
    failed: list[FailureInfo]
    skipped: list[SkippedInfo] = Field(default_factory=list)
    serving: list[str]
    default: str | None
    routes_added: list[str] = Field(default_factory=list, description="Per-model routes that answer from now on")
    routes_removed: list[str] = Field(default_factory=list, description="Per-model routes gone from now on")
    routes_answer: str = Field(
        default="now",
        description="When the routes above answer: from the next request on, in every worker of this server",
    )
    replica: str | None = Field(default=None, description="The replica that answered", json_schema_extra=NULLABLE)
    signal: SignalInfo | None = Field(
        default=None, description="How far the reload's signal got", json_schema_extra=NULLABLE
    )
    repository: RepositoryInfo | None = Field(
        default=None, description="The model repository, when one is set", json_schema_extra=NULLABLE
    )


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


def skipped(items: tuple[Skipped, ...] | list[Skipped]) -> list[SkippedInfo]:
    return [SkippedInfo(name=s.name, tag=s.tag, reason=s.reason, fix=s.fix) for s in items]


def repository_info(status: RepositoryStatus | None) -> RepositoryInfo | None:
    if status is None:
        return None
    return RepositoryInfo(
        url=status.url,
        reachable=status.reachable,
        unreachable_since=status.unreachable_since,
        error=status.error,
        last_pull=status.last_pull,
        incomplete=list(status.incomplete),
        store_error=status.store_error,
        signal_pending=status.signal_pending,
    )


def replica_info(status: ReplicaStatus) -> ReplicaInfo:
    return ReplicaInfo(
        name=status.name,
        worker=worker_index(),
        store=status.store,
        sync_interval_seconds=status.sync_interval_seconds,
        last_check=status.last_check,
        signal_error=status.signal_error,
    )


def signal_info(signal: Signal | None) -> SignalInfo | None:
    if signal is None:
        return None
    return SignalInfo(
        reaches=signal.reaches,
        written=list(signal.written),
        failed=[SignalFailure(where=w, reason=r) for w, r in signal.failed],
        pending=signal.pending,
    )


def listing(
    snapshot: Snapshot, status: ReplicaStatus | None = None, fixes: adapter.AdapterStatus | None = None
) -> ModelListing:
    best = snapshot.best()

    def info(model: LoadedModel) -> ModelInfo:
        return ModelInfo(
            name=model.name,
            tag=model.tag,
            algorithm=model.algorithm,
            default=model is best,
            route=route_of(model.name),
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
        skipped=skipped(snapshot.skipped),
        replica=replica_info(status) if status else None,
        repository=repository_info(status.repository) if status else None,
        fixes=fixes,
    )


def report(change: Change, before: Snapshot, after: Snapshot, status: ReplicaStatus | None = None) -> ReloadReport:
    best = after.best()
    old, new = before.routes(), after.routes()
    return ReloadReport(
        added=change.added,
        updated=change.updated,
        removed=change.removed,
        failed=failures(change.failed),
        skipped=skipped(change.skipped),
        serving=change.serving,
        default=best.tag if best else None,
        routes_added=sorted(new.keys() - old.keys()),
        routes_removed=sorted(old.keys() - new.keys()),
        replica=status.name if status else None,
        signal=signal_info(change.signal),
        repository=repository_info(status.repository) if status else None,
    )


class Refused(ServingError):
    """An answer the gateway gives before BentoML sees the request."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message, **details)
        self.status = status


class Gateway:
    """Pure ASGI middleware in front of BentoML's routes.

    - catches the worker up with a reload another worker did (one stat() per request otherwise), and makes the
      app's per-model routes follow what the worker serves (penguins.routes);
    - refuses bodies over the configured size from Content-Length, and while streaming, before parsing;
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
                return await _respond(send, refused, extra_headers=[(b"www-authenticate", b"Bearer")])

        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _respond(send, Refused(413, f"request body over {limit} bytes", limit_bytes=limit))

        registry = get_registry()
        if registry.is_stale():
            import anyio

            await anyio.to_thread.run_sync(registry.sync)
        snapshot = registry.snapshot
        self.routes.follow(scope["app"], snapshot)
        typed = path in self.routes.by_route
        if not typed and path.startswith(MODEL_ROUTE_PREFIX):
            requested = path.removeprefix(MODEL_ROUTE_PREFIX).replace("_", "-")[:80]
            return await _respond(send, snapshot.not_served(requested))

        if declared is None and scope.get("method") == "POST":
            # No Content-Length (chunked): read it here, bounded, and replay it; BentoML buffers it whole anyway.
            body = await _read_bounded(receive, limit)
            if body is None:
                return await _respond(send, Refused(413, f"request body over {limit} bytes", limit_bytes=limit))
            receive = _replay(body, receive)
        predicts = scope["method"] == "POST" and (typed or path == "/classify")  # not a CORS preflight, say
        log = self.prediction_log() if predicts else None
        if log is not None:
            receive, send = _recorded(scope, receive, send, log, headers)
        await self.app(scope, receive, send)


# Every per-model route starts so (names.endpoint_name).
MODEL_ROUTE_PREFIX = "/classify_"


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


async def _respond(send: Callable[..., Any], error: ServingError, extra_headers: list | None = None) -> None:
    status, body = error.status, error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
