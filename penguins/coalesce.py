"""Calls of one blocking function that overlap share its runs: at most one runs at a time, in a thread outside the
request threads, and however many calls arrive while it runs share the next one.

For `reload`: 100 concurrent reloads each took a request thread and re-read the store in turn, and classify waited
behind them for ~15 s. Coalesced, they cost two store scans at most, and no request thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    """`await coalesced()` runs `func` or joins a run of it that has not started yet.

    A call that arrives while a run is under way waits for the next one, which starts after it: its result reflects
    everything done before the call (a model saved, then reload called, is seen).
    """

    def __init__(self, func: Callable[[], T], on_run: Callable[[], Any] | None = None):
        self.func = func
        self.on_run = on_run
        self.runs = 0
        self._pending: asyncio.Future[T] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._limiter: Any = None

    async def __call__(self) -> T:
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = loop.create_future()
        waiting = self._pending
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await asyncio.shield(waiting)  # a caller that goes away does not cancel the run others wait for

    async def _drain(self) -> None:
        import anyio
        import anyio.to_thread

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)  # its own: never one of the request threads
        while self._pending is not None:
            waiting, self._pending = self._pending, None
            try:
                result = await anyio.to_thread.run_sync(self.func, limiter=self._limiter)
            except Exception as error:
                waiting.set_exception(error)
            else:
                waiting.set_result(result)
            finally:
                self.runs += 1
                if self.on_run is not None:
                    self.on_run()


@cache
def reloads_counter() -> Any:
    """Store re-reads a worker actually ran for `reload` requests (coalesced), in its /metrics."""
    from prometheus_client import Counter

    return Counter("penguins_store_reloads", "Store re-reads run for reload requests, after coalescing")
