"""The promotion gate: a newly trained version is served only if its held-out score is not worse than the served
version's by more than a tolerance. Decided BEFORE saving, because the decision is a label (`status=promoted` or
`status=rejected`) and BentoML sets labels at save time. A rejected version stays in the store (listed by the
service as rejected); `scan.scan` skips it, so the service keeps the version it had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from penguins import publishing as repository
from penguins.names import REJECTED, STATUS_LABEL, default_store_dir
from penguins.saving import TrainedModel, save
from penguins.scan import StoredModel, scan

PROMOTED = "promoted"
DEFAULT_TOLERANCE = 0.01
# The held-out score compared: accuracy on the stratified test part, which training never sees.
METRIC = "test_accuracy"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    score: float
    tolerance: float
    served_tag: str | None
    served_score: float | None
    reason: str

    @property
    def status(self) -> str:
        return PROMOTED if self.promoted else REJECTED

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}

    def as_metadata(self) -> dict[str, Any]:
        """For the model's metadata, which takes no None."""
        return {k: v for k, v in self.as_dict().items() if v is not None}


def served_version(name: str, store_dir: Path | None = None) -> StoredModel | None:
    """The version of `name` the service serves (after its next reload), as `scan.scan` chooses it."""
    stored, _ = scan(store_dir or default_store_dir())
    return next((m for m in stored if m.name == name), None)


def decide(
    name: str, metrics: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE, store_dir: Path | None = None
) -> Decision:
    """Promote when nothing is served yet, or when score >= served score - tolerance."""
    from bentoml import Model

    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    score = float(metrics[METRIC])
    served = served_version(name, store_dir)
    if served is None:
        return Decision(True, METRIC, score, tolerance, None, None, f"no version of {name} is served yet")
    try:
        served_score = float(Model.from_path(served.path).info.metadata[METRIC])
    except Exception as error:  # unreadable or too old to carry the metric: nothing to be worse than
        return Decision(
            True,
            METRIC,
            score,
            tolerance,
            served.tag,
            None,
            f"the served version {served.tag} has no readable {METRIC} ({type(error).__name__})",
        )
    # A hair of slack so that equal scores computed along different float paths compare equal.
    if score + 1e-9 >= served_score - tolerance:
        reason = f"{METRIC} {score:.4f} is within {tolerance:g} of (or above) the served {served_score:.4f}"
        return Decision(True, METRIC, score, tolerance, served.tag, served_score, reason)
    reason = f"{METRIC} {score:.4f} is worse than the served {served_score:.4f} by more than {tolerance:g}"
    return Decision(False, METRIC, score, tolerance, served.tag, served_score, reason)


def skipped(metrics: dict[str, Any]) -> Decision:
    return Decision(True, METRIC, float(metrics[METRIC]), 0.0, None, None, "gate skipped (--no-gate, gate=False)")


def save_gated(
    trained: TrainedModel, tolerance: float = DEFAULT_TOLERANCE, gate: bool = True, store_dir: Path | None = None
) -> tuple[str, Decision]:
    """Decide, then save `trained` with the decision as its `status` label and in its
    metadata (`gate`). Returns the new tag and the decision."""
    # With a model repository, the served version to beat may have been trained on another machine: fetch it first.
    if gate:
        repository.pull(store_dir)
    decision = decide(trained.name, trained.metrics, tolerance, store_dir) if gate else skipped(trained.metrics)
    trained.provenance["gate"] = decision.as_metadata()
    tag = save(trained, labels={STATUS_LABEL: decision.status})
    return tag, decision
