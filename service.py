"""The BentoML service: one typed endpoint per penguin model, a generic classify, explain, the listing and reload,
and the web page at /ui.

A thin shell: the models, the store and the rules live in the `penguins` package.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Annotated

import bentoml
from pydantic import Field
from pydantic_core import to_json
from starlette.responses import Response

from penguins import adapter, ui
from penguins.api_types import ModelName, Penguins, Predictions
from penguins.coalesce import Coalesced, reloads_counter
from penguins.contract import Penguin
from penguins.errors import answers_errors
from penguins.explain import DEFAULT_NEIGHBOURS, MAX_NEIGHBOURS, Explanation, TrainingMap
from penguins.gateway import Gateway
from penguins.http import admission, front, hints, metrics, openapi
from penguins.listing import ModelListing, ReloadReport, listing, report
from penguins.logs import quiet_client_errors
from penguins.names import MODEL_ROUTE_PREFIX
from penguins.registry import get_registry
from penguins.replica import worker_index
from penguins.serving import server_config
from penguins.settings import get_settings
from penguins.startup import startup_line

settings = get_settings()
logger = logging.getLogger("penguins")

Neighbours = Annotated[int, Field(ge=1, le=MAX_NEIGHBOURS, description="How many nearest training penguins to return")]


def _json(status: int, body: bytes | str) -> Response:
    return Response(body, status_code=status, media_type="application/json")


@bentoml.service(name="penguin_classifier", **server_config(settings))
class PenguinClassifier:
    """Palmer Penguins species classifiers from the BentoML model store.

    Besides the APIs below, every served model has its own typed endpoint, `/classify_<name>`, added and removed
    at runtime as the store changes (after `reload`): `models` lists them with their routes.
    """

    def __init__(self) -> None:
        self.adapter = adapter.apply(
            settings.max_batch_wait_ms,
            settings.bulk_body_bytes,
            settings.log_predictions,
            drain_s=settings.drain_s,
            connections=(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections),
        )
        quiet_client_errors()
        logger.setLevel(logging.INFO)  # what it serves and why, in the server's log (every penguins.* logger)
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        self.registry = get_registry()
        logger.info("worker %s: %s", worker_index(), startup_line(self.registry.store_dir, self.registry.sync()))
        # Without traffic too, each worker follows reloads signalled elsewhere (docs/replicas.md).
        self.registry.start(settings.sync_interval_seconds)
        self.reloads = Coalesced(self._reload_now, on_run=reloads_counter().inc)
        adapter.bind_once(self, list(PenguinClassifier.apis))
        # What was loaded so far (libraries, models) lives as long as the worker: out of every later garbage
        # collection, whose full passes over it paused the worker under load (docs/performance.md).
        gc.collect()
        gc.freeze()
        adapter.spread_connections(worker_index())  # last: from here on the kernel routes connections to us

    @bentoml.on_shutdown
    def stop_sync(self) -> None:
        self.registry.stop()

    def __is_ready__(self) -> bool:
        return bool(self.registry.sync().models)

    @bentoml.api
    @answers_errors
    def classify(self, penguins: Penguins, model: ModelName = None) -> Predictions:
        """Classify penguins with the named model, or with the best one by cross-validated accuracy."""
        chosen = self.registry.sync().lookup(model)
        # Serialised here: BentoML 1.4.39 would dump a list output through pydantic twice; pydantic-core's to_json
        # writes it compact and fast (docs/performance.md).
        return _json(200, to_json(chosen.predict(penguins)))

    @bentoml.api
    @answers_errors
    def explain(self, penguin: Penguin, model: ModelName = None, k: Neighbours = DEFAULT_NEIGHBOURS) -> Explanation:
        """Classify one penguin and explain: its k nearest training penguins, its place on the PCA map, importances."""
        return self.registry.sync().lookup(model, explainable=True).explain(penguin, k)

    @bentoml.api
    @answers_errors
    def training_map(self, model: ModelName = None) -> TrainingMap:
        """The model's training penguins on its 2-D PCA map (the map explain places a penguin on)."""
        chosen = self.registry.sync().lookup(model, explainable=True)
        return chosen.explainer.training_map(chosen.tag)

    @bentoml.api
    def models(self) -> ModelListing:
        """List the served models with their metrics and routes, the versions the gate rejected, the store entries
        that failed to load, and the penguin-named models that are not served (skipped) with the call that would."""
        registry = self.registry
        return listing(registry.sync(), registry.status(), registry.repository_status(), self.adapter)

    @bentoml.api
    async def reload(self) -> ReloadReport:
        """Re-read the model store now, in every worker; report what was added, updated, removed, failed or skipped,
        and the per-model routes added and removed (they answer from the next request on). Concurrent reloads share
        one re-read (penguins.coalesce)."""
        return await self.reloads()

    def _reload_now(self) -> ReloadReport:
        before = self.registry.snapshot
        change = self.registry.reload()
        registry = self.registry
        return report(change, before, registry.snapshot, registry.status(), registry.repository_status())


for _api in PenguinClassifier.apis.values():
    hints.strict_input(_api)
PenguinClassifier.add_asgi_middleware(metrics.Metrics)  # outermost: counts every answer, the refusals too
PenguinClassifier.add_asgi_middleware(
    front.Front, conflict_routes=("/explain", "/training_map"), runtime_prefixes=(MODEL_ROUTE_PREFIX,)
)
PenguinClassifier.add_asgi_middleware(Gateway)
PenguinClassifier.add_asgi_middleware(
    openapi.Published,
    service=PenguinClassifier,
    admin_routes=("/reload",) if settings.admin_token else (),
    conflict_routes=("/explain", "/training_map"),
)
PenguinClassifier.add_asgi_middleware(admission.Bodies)
PenguinClassifier.add_asgi_middleware(hints.ErrorHints)
PenguinClassifier.mount_asgi_app(ui.create_app(), path=ui.PATH, name="ui")
