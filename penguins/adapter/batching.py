"""BentoML's adaptive batching (the CorkDispatcher behind every per-model endpoint): never split a request, never
learn to hold a lone one."""

from __future__ import annotations

import logging
from typing import Any

from penguins.adapter.guard import Target, fits, fix, mark

logger = logging.getLogger("penguins.adapter")

DISPATCHER = "bentoml._internal.marshal.dispatcher"

KEEP_REQUESTS_WHOLE = fix(
    "keep_requests_whole",
    "bentoml",
    [
        Target(
            DISPATCHER, "CorkDispatcher._get_inputs", ("self", "num_batches"), uses=("_queue", "get_batch_size", "data")
        ),
        Target(DISPATCHER, "CorkDispatcher", uses=("_get_inputs", "max_batch_size")),  # it batches through it
    ],
    upstream="bentoml/BentoML#4752",
    what="a request bigger than the batch room is split across batches run one after another (~1.6x its time)",
)
BOUND_BATCH_WAIT = fix(
    "bound_batch_wait",
    "bentoml",
    [
        Target(DISPATCHER, "Optimizer.trigger_refresh", ("self",), uses=("wait",)),
        Target(DISPATCHER, "CorkDispatcher", uses=("trigger_refresh", "wait")),  # learns, then holds that long
    ],
    upstream="none filed: docs/upstream.md#bound_batch_wait",
    what="after heavy load the batcher learns a ~15 ms wait and holds every lone request that long",
)


def keep_requests_whole() -> None:
    """Never split one request across batches.

    BentoML's CorkDispatcher fills each batch up to `max_batch_size` and splits the request that does not fit
    (bentoml/BentoML#4752, by design): one request of 10,000 penguins became ten 1,000-row batches run one after
    another, each with its own thread hop and model call. Here a request that does not fit waits for the next batch,
    and one larger than `max_batch_size` is a batch of its own: `max_batch_size` bounds how many penguins from
    different requests are combined, not a request.
    """
    if not fits(KEEP_REQUESTS_WHOLE.name):
        return
    from bentoml._internal.marshal.dispatcher import CorkDispatcher  # only once the guard says it fits

    original = CorkDispatcher._get_inputs
    if getattr(original, "keeps_requests_whole", False):
        return

    def _get_inputs(self: CorkDispatcher, num_batches: int | None = None) -> Any:
        limit = self.max_batch_size if num_batches is None else num_batches
        size = 0
        while self._queue:
            try:
                next_size = self.get_batch_size(self._queue[0].data)
            except Exception:  # as BentoML does: said in the log, then counted as one
                logger.exception("error in batch-size aware batching, falling back to regular batching method")
                next_size = 1
            if size and size + next_size > limit:
                return
            size += next_size
            yield self._queue.popleft()
            if size >= limit:
                return

    CorkDispatcher._get_inputs = mark(_get_inputs, original, "keeps_requests_whole")


def bound_batch_wait(max_wait_ms: float) -> None:
    """Cap the wait BentoML's adaptive batching learns.

    The CorkDispatcher holds a queued request while `0.95 × wait` exceeds its age plus a 1 ms tick, where `wait` is
    the mean queueing time of its last 50 batches. A lone request's measured wait is that held time plus the tick's
    overshoot, so after heavy load `wait` does not decay to zero but settles near 15 ms: a lone client then waits
    that long on every request, for nothing.
    """
    if not fits(BOUND_BATCH_WAIT.name):
        return
    from bentoml._internal.marshal.dispatcher import Optimizer

    learn = getattr(Optimizer.trigger_refresh, "__penguins_original__", Optimizer.trigger_refresh)

    def trigger_refresh(self: Optimizer) -> None:
        learn(self)
        self.wait = min(self.wait, max_wait_ms / 1000)

    Optimizer.trigger_refresh = mark(trigger_refresh, learn, "bounds_wait")
