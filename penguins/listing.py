"""The answers of `models` and `reload`: what a worker serves, holds and skips, and what a reload changed, with
its replica's and repository's status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from penguins import adapter
from penguins.loaded import LoadedModel
from penguins.names import route_of
from penguins.refresh import Change
from penguins.replica import ReplicaStatus
from penguins.scan import Failure, Skipped
from penguins.signals import Signal
from penguins.snapshot import Snapshot
from penguins.upstream import RepositoryStatus

# BentoML publishes `X | None` as X alone (it flattens the anyOf): this keeps null allowed in the document.
NULLABLE = {"nullable": True}


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


class ModelListing(BaseModel):
    default: str | None
    models: list[ModelInfo]
    failures: list[Failure]
    rejected: list[RejectedInfo] = Field(
        default_factory=list, description="Versions kept in the store but not served: the promotion gate rejected them"
    )
    skipped: list[Skipped] = Field(
        default_factory=list, description="Penguin-named models in the store that are not served, and why"
    )
    replica: ReplicaStatus | None = Field(
        default=None, description="Which replica and worker answered, and its sync", json_schema_extra=NULLABLE
    )
    repository: RepositoryStatus | None = Field(
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
    failed: list[Failure]
    skipped: list[Skipped] = Field(default_factory=list)
    serving: list[str]
    default: str | None
    routes_added: list[str] = Field(default_factory=list, description="Per-model routes that answer from now on")
    routes_removed: list[str] = Field(default_factory=list, description="Per-model routes gone from now on")
    routes_answer: str = Field(
        default="now",
        description="When the routes above answer: from the next request on, in every worker of this server",
    )
    replica: str | None = Field(default=None, description="The replica that answered", json_schema_extra=NULLABLE)
    signal: Signal | None = Field(
        default=None, description="How far the reload's signal got", json_schema_extra=NULLABLE
    )
    repository: RepositoryStatus | None = Field(
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


def listing(
    snapshot: Snapshot,
    replica: ReplicaStatus | None = None,
    repository: RepositoryStatus | None = None,
    fixes: adapter.AdapterStatus | None = None,
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
        failures=list(snapshot.failures),
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
        skipped=list(snapshot.skipped),
        replica=replica,
        repository=repository,
        fixes=fixes,
    )


def report(
    change: Change,
    before: Snapshot,
    after: Snapshot,
    replica: ReplicaStatus | None = None,
    repository: RepositoryStatus | None = None,
) -> ReloadReport:
    best = after.best()
    old, new = before.routes(), after.routes()
    return ReloadReport(
        added=change.added,
        updated=change.updated,
        removed=change.removed,
        failed=change.failed,
        skipped=change.skipped,
        serving=change.serving,
        default=best.tag if best else None,
        routes_added=sorted(new.keys() - old.keys()),
        routes_removed=sorted(old.keys() - new.keys()),
        replica=replica.name if replica else None,
        signal=change.signal,
        repository=repository,
    )
