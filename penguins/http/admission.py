"""The one reader of request bodies: each POST body read whole before the app does, bounded by the body limit
(413 past it, Content-Length or not), and a bound on the bulk ones a worker works on at once, the next ones waiting
their turn with their bodies unread."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from penguins.errors import Refused
from penguins.http.asgi import header, send_error
from penguins.http.routing import ASGIApp
from penguins.settings import Settings, get_settings


class Bodies:
    """Read each POST body whole before the app does; bound the bulk ones a process works on at once.

    A bulk request beyond `bulk_concurrency` waits its turn (first come, first served) with its body unread: uvicorn
    stops reading a connection once 64 KiB of its body are buffered, so a waiting flooder costs a socket and nothing
    else. Beyond `bulk_queue` waiting, or after waiting half the body timeout (which would close it), it gets 429.
    Answering at once instead let each flooder send its next 10,000-penguin body straight away: draining those
    bodies kept the event loop waiting on the GIL the one admitted request held, and a lone small request waited
    ~100x longer than with the flooders simply held back (docs/reliability.md, Fair share).
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None):
        self.app = app
        self.settings = settings or get_settings()
        self.bulk_in_progress = 0
        self.bulk_waiting: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        bulk = declared is not None and declared.isdigit() and int(declared) >= self.settings.bulk_body_bytes
        if bulk and not await self._take_turn():
            return await self._busy(send)
        try:
            limit = self.settings.max_body_bytes
            body = await _read_whole(receive, limit)
            if body is None:
                return  # the client left mid-body: nobody to answer, nothing to count as an error
            if body is TOO_LARGE:  # chunked, or longer than it said: refused before BentoML buffers the rest
                return await send_error(send, Refused(413, f"request body over {limit} bytes", limit_bytes=limit))
            if not bulk and len(body) >= self.settings.bulk_body_bytes:  # chunked: known only now
                if not await self._take_turn():
                    return await self._busy(send)
                bulk = True
            await self.app(scope, _replay(body, receive), send)
        finally:
            if bulk:
                self._end_turn()

    async def _take_turn(self) -> bool:
        """A bulk slot, now or after the requests waiting before this one; False when the queue is full or the
        wait too long."""
        if self.bulk_in_progress < self.settings.bulk_concurrency and not self.bulk_waiting:
            self.bulk_in_progress += 1
            return True
        if len(self.bulk_waiting) >= self.settings.bulk_queue:
            return False
        turn = asyncio.get_running_loop().create_future()
        self.bulk_waiting.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.settings.body_timeout_s / 2)
        finally:
            if not turn.done():  # timed out, or this request was cancelled: give up the place
                self.bulk_waiting.remove(turn)
                turn.cancel()
        return not turn.cancelled()  # done: the slot was handed over by _end_turn

    def _end_turn(self) -> None:
        if self.bulk_waiting:
            self.bulk_waiting.popleft().set_result(None)  # the slot passes to the next in line
        else:
            self.bulk_in_progress -= 1

    async def _busy(self, send: Callable[..., Any]) -> None:
        retry = self.settings.bulk_retry_after_s
        busy = Refused(
            429,
            f"this server works on {self.settings.bulk_concurrency} bulk request(s) at a time and "
            f"{len(self.bulk_waiting)} are waiting their turn: retry later",
            retry_after_s=retry,
        )
        await send_error(send, busy, [(b"retry-after", str(retry).encode())])


TOO_LARGE: Any = object()  # the body passed the limit (its rest is not read)


async def _read_whole(receive: Callable[..., Any], limit: int) -> Any:
    """A request's whole body; None when the client disconnects before its end; TOO_LARGE once it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable[..., Any]) -> Callable[..., Any]:
    """A `receive` that gives the app the body already read, in one message, then what the client sends next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()  # after the body: a disconnect, whenever it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
