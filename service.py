"""The BentoML service: one typed endpoint per penguin model, a generic classify, explain, the listing and reload,
and the web page at /ui.

A thin shell: the models, the store and the rules live in the `penguins` package.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field
from pydantic_core import to_json
from starlette.responses import Response

from penguins import ui, workarounds
from penguins.contract import Penguin
from penguins.explain import DEFAULT_NEIGHBOURS, MAX_NEIGHBOURS, Explanation, TrainingMap
from penguins.predlog import worker_index
from penguins.serving import (
    Gateway,
    ModelListing,
    ModelName,
    Penguins,
    Predictions,
    ReloadReport,
    get_registry,
    listing,
    report,
    resolve,
    resolve_explainable,
    server_config,
    typed_routes,
)
from penguins.settings import get_settings
from penguins.store import default_store_dir, endpoint_name, model_name, scan
from penguins.training import ALGORITHMS

settings = get_settings()

Neighbours = Annotated[int, Field(ge=1, le=MAX_NEIGHBOURS, description="How many nearest training penguins to return")]

# Routes are fixed when the service is declared: one per known algorithm and per model already in the store.
# A model first saved later is served by `classify(model=...)` at once and gets its own route on restart.
ALGORITHMS_WITH_ROUTES = sorted(set(ALGORITHMS) | {m.algorithm for m in scan(default_store_dir())[0]})
ROUTES = typed_routes(ALGORITHMS_WITH_ROUTES)


def _json(status: int, body: bytes | str) -> Response:
    return Response(body, status_code=status, media_type="application/json")


class PenguinClassifier:
    def __init__(self) -> None:
        workarounds.apply(settings.max_batch_wait_ms)
        self.registry = get_registry()
        self.registry.sync()
        workarounds.freeze_heap()  # what was loaded above lives as long as the worker
        workarounds.spread_connections(worker_index())  # last: from here on the kernel routes connections to us

    def __is_ready__(self) -> bool:
        return bool(self.registry.sync().models)

    @bentoml.api
    def classify(self, penguins: Penguins, model: ModelName = None) -> Predictions:
        """Classify penguins with the named model, or with the best one by cross-validated accuracy."""
        chosen = resolve(self.registry.sync(), model)
        if isinstance(chosen, tuple):
            return _json(*chosen)
        # Serialised here: BentoML 1.4.39 would dump a list output through pydantic twice (~300 ms for 10,000 rows);
        # pydantic-core's to_json writes it compact, ~5x faster than json.dumps (7 vs 36 ms for 10,000 rows).
        return _json(200, to_json(chosen.predict(penguins)))

    @bentoml.api
    def explain(self, penguin: Penguin, model: ModelName = None, k: Neighbours = DEFAULT_NEIGHBOURS) -> Explanation:
        """Classify one penguin and explain: its k nearest training penguins, its place on the PCA map, importances."""
        chosen = resolve_explainable(self.registry.sync(), model)
        if isinstance(chosen, tuple):
            return _json(*chosen)
        return chosen.explain(penguin, k)

    @bentoml.api
    def training_map(self, model: ModelName = None) -> TrainingMap:
        """The model's training penguins on its 2-D PCA map (the map explain places a penguin on)."""
        chosen = resolve_explainable(self.registry.sync(), model)
        if isinstance(chosen, tuple):
            return _json(*chosen)
        return chosen.explainer.training_map(chosen.tag)

    @bentoml.api
    def models(self) -> ModelListing:
        """List the served models with their metrics and routes, and the store entries that failed to load."""
        return listing(self.registry.sync(), ROUTES)

    @bentoml.api
    def reload(self) -> ReloadReport:
        """Re-read the model store now, in every worker; report what was added, updated, removed or failed."""
        change = self.registry.reload()
        return report(change, self.registry.snapshot)


def _typed_endpoint(algorithm: str):
    name = model_name(algorithm)

    def endpoint(self: PenguinClassifier, penguins: Penguins) -> Predictions:
        # The gateway answered 503 already if the model is missing; `retired` covers a batch queued before a
        # reload removed it.
        registry = self.registry
        loaded = registry.snapshot.models.get(name) or registry.retired[name]
        return loaded.predict(penguins)

    endpoint.__name__ = endpoint.__qualname__ = endpoint_name(algorithm)
    endpoint.__doc__ = f"Classify penguins with the {algorithm} model ({name})."
    return bentoml.api(
        endpoint,
        route=f"/{endpoint.__name__}",
        batchable=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )


for _algorithm in ALGORITHMS_WITH_ROUTES:
    setattr(PenguinClassifier, endpoint_name(_algorithm), _typed_endpoint(_algorithm))

PenguinClassifier = bentoml.service(name="penguin_classifier", **server_config(settings))(PenguinClassifier)
PenguinClassifier.add_asgi_middleware(Gateway, model_routes=ROUTES)
PenguinClassifier.mount_asgi_app(ui.create_app(), path=ui.PATH, name="ui")
