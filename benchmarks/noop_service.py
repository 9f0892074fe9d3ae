"""The framework ceiling: a BentoML endpoint with our input and output types and server settings, doing no work."""

import gc

import bentoml

from penguins import adapter
from penguins.api_types import Penguins, Predictions
from penguins.contract import Prediction
from penguins.http import metrics
from penguins.replica import worker_index
from penguins.serving import server_config
from penguins.settings import get_settings

settings = get_settings()
ANSWER = Prediction(species="Adelie", probabilities={"Adelie": 1.0, "Chinstrap": 0.0, "Gentoo": 0.0}, model="noop:0")


@bentoml.service(name="noop", **server_config(settings))
class Noop:
    def __init__(self) -> None:
        adapter.apply(settings.max_batch_wait_ms)
        adapter.bind_once(self, list(Noop.apis))
        gc.collect()  # as the service does: the start-up heap out of later collections
        gc.freeze()
        adapter.spread_connections(worker_index())

    @bentoml.api(
        batchable=settings.batching, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms
    )
    def classify(self, penguins: Penguins) -> Predictions:
        """Answer without predicting."""
        return [ANSWER] * len(penguins)


# HTTP metrics as the service has them: server_config turns BentoML's own off, so without ours the ceiling would
# skip work every real server does (before, BentoML's metrics were in both).
Noop.add_asgi_middleware(metrics.Metrics)
