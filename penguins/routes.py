"""The per-model endpoints: one typed API method per served model, following what the store serves.

Each worker builds them from its registry's snapshot and swaps them into its running app (through
`adapter.serve_apis`) before it routes a request that comes after the snapshot changed: after a reload, a new
model answers at `/classify_<name>`, appears in `/docs.json` and in the client's schema, and a removed one's route is
gone, with no restart and no request dropped.
"""

from __future__ import annotations

from typing import Any

from penguins import adapter
from penguins.api_types import Penguins, Predictions
from penguins.http.hints import strict_input
from penguins.names import MODEL_PREFIX, endpoint_name, route_of
from penguins.settings import Settings
from penguins.snapshot import Snapshot


def typed_api(name: str, settings: Settings) -> Any:
    """The API method of one model: `penguins-extra-trees` -> `classify_extra_trees` at `/classify_extra_trees`."""
    import bentoml

    def endpoint(self, penguins):
        # The gateway answered already when the model is not served; `retired` keeps a model a reload removed for
        # the batch that was queued before.
        registry = self.registry
        loaded = registry.snapshot.models.get(name) or registry.retired[name]
        return loaded.predict(penguins)

    # Real objects, not strings: BentoML reads the signature to build the endpoint's input and output models.
    endpoint.__annotations__ = {"penguins": Penguins, "return": Predictions}
    short = name.removeprefix(MODEL_PREFIX)
    endpoint.__name__ = endpoint.__qualname__ = endpoint_name(short)
    endpoint.__doc__ = f"Classify penguins with the {short} model ({name}), served from the model store."
    api = bentoml.api(
        endpoint,
        route=route_of(name),
        batchable=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    strict_input(api)  # unknown top-level fields refused, as on the service's own APIs
    return api


class ModelRoutes:
    """Which per-model routes one worker's app serves, made to follow its registry's snapshot."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.by_route: dict[str, str] = {}  # route -> model name, as applied
        self._applied: Snapshot | None = None
        self._apis: dict[str, Any] = {}  # built once per model name: an API method's models cost ~ms to build

    def follow(self, app: Any, snapshot: Snapshot) -> None:
        """Serve exactly the snapshot's models' routes (a no-op while the snapshot stays the same)."""
        if snapshot is self._applied:
            return
        routes = snapshot.routes()
        if routes != self.by_route or self._applied is None:
            for name in routes.values():
                if name not in self._apis:
                    self._apis[name] = typed_api(name, self.settings)
            served = adapter.serve_apis(app, {self._apis[n].name: self._apis[n] for n in routes.values()})
            # On a BentoML the swap was not written for, none is served: `/classify` with `model` still is.
            self.by_route = routes if served else {}
        self._applied = snapshot
