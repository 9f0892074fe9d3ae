"""What one worker serves at one moment: the loaded models and what the store holds but does not serve, looked
up per request, and the typed error (404, 503) for a model it does not serve."""

from __future__ import annotations

from dataclasses import dataclass, field

from penguins.errors import NoModelLoaded, NotExplainable, ServingError, UnknownModel
from penguins.loaded import LoadedModel
from penguins.names import MODEL_PREFIX, route_of
from penguins.scan import Failure, RejectedVersion, Skipped


@dataclass(frozen=True)
class Snapshot:
    """What one worker serves: replaced whole on reload, so a request keeps the models it started with."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    rejected: tuple[RejectedVersion, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    def same_as(self, other: Snapshot) -> bool:
        """Serves the same tags and reports the same failures, rejections and skipped models."""
        return (
            {n: m.tag for n, m in self.models.items()} == {n: m.tag for n, m in other.models.items()}
            and self.failures == other.failures
            and self.rejected == other.rejected
            and self.skipped == other.skipped
        )

    def best(self) -> LoadedModel | None:
        """The default model: highest cross-validated accuracy (ties broken by name)."""
        if not self.models:
            return None
        return max(self.models.values(), key=lambda m: (m.cv_accuracy, m.name))

    def routes(self) -> dict[str, str]:
        """Each served model's own route -> its name: what the service's per-model endpoints are."""
        return {route_of(name): name for name in self.models}

    def lookup(self, requested: str | None = None, explainable: bool = False) -> LoadedModel:
        """The model a request asked for (name, algorithm or exact tag; None: the default one), or a typed error."""
        chosen = self.best() if requested is None else self._find(requested)
        if chosen is None:
            raise self.not_served(requested or "")
        if explainable and chosen.explainer is None:
            raise NotExplainable(chosen.tag)
        return chosen

    def not_served(self, requested: str) -> ServingError:
        """The typed error for a model this snapshot does not serve: 503 when it serves none, else 404 naming the
        served ones, and saying why when the store holds the model (skipped, failed to load, rejected by the gate)."""
        if not self.models:
            names = [s.name for s in self.skipped] + [f.name for f in self.failures] + [r.name for r in self.rejected]
            held = {name: why["reason"] for name in dict.fromkeys(names) if (why := self._why_not(name))}
            return NoModelLoaded(held)
        served = list(self.models.values())
        return UnknownModel(requested, [m.name for m in served], [m.tag for m in served], self._why_not(requested))

    def _why_not(self, requested: str) -> dict[str, str] | None:
        name, _, version = requested.partition(":")
        full = name if name.startswith(MODEL_PREFIX) else MODEL_PREFIX + name
        tag = f"{full}:{version}" if version else None
        for skipped in self.skipped:
            if skipped.name == full:
                return {"reason": skipped.reason, "fix": skipped.fix}
        for failure in self.failures:
            if failure.name == full and (tag is None or failure.tag in (None, tag)):
                return {"reason": f"it failed to load ({failure.reason})"}
        rejected = {r.tag for r in self.rejected if r.name == full}
        if (tag in rejected) or (tag is None and rejected and full not in self.models):
            return {"reason": "the promotion gate rejected it (`models` lists it under `rejected`, with the decision)"}
        if tag is not None and full in self.models:
            return {"reason": f"{tag} is not the served version ({self.models[full].tag})"}
        return None

    def _find(self, requested: str) -> LoadedModel | None:
        name, _, version = requested.partition(":")
        for model in self.models.values():
            short = model.name.removeprefix(MODEL_PREFIX)
            if name in (model.name, short, model.algorithm) and (not version or model.tag == f"{model.name}:{version}"):
                return model
        return None
