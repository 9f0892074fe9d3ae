"""The bulk queue of `penguins.http.admission.Bodies` on its own: who is admitted, who waits (in order), who retries."""

from __future__ import annotations

import asyncio

from penguins.http.admission import Bodies
from penguins.settings import Settings

BULK = b"x" * 2048


class Held:
    """An app that answers a request only when the test lets it go, recording the order it saw bodies in."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.release: dict[bytes, asyncio.Event] = {}

    async def __call__(self, scope, receive, send) -> None:
        body = (await receive())["body"]
        self.started.append(body)
        await self.release.setdefault(body, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def let_go(self, body: bytes) -> None:
        self.release.setdefault(body, asyncio.Event()).set()


async def _request(guard: Bodies, body: bytes, answers: dict[bytes, int]) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/classify",
        "headers": [(b"content-length", str(len(body)).encode())],
    }
    received = False

    async def receive():
        nonlocal received
        if received:
            await asyncio.Event().wait()  # no disconnect while the test runs
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answers[body] = message["status"]
            if message["status"] == 429:
                assert (b"retry-after", b"1") in message["headers"]

    await guard(scope, receive, send)


def _guard(app, **settings) -> Bodies:
    return Bodies(app, Settings(bulk_body_bytes=1024, bulk_concurrency=1, **settings))


def test_bulk_requests_wait_their_turn_in_order_and_beyond_the_queue_are_told_to_retry():
    async def scenario() -> None:
        app, answers = Held(), {}
        guard = _guard(app, bulk_queue=2)
        bodies = [BULK + bytes([i]) for i in range(4)]
        tasks = []
        for body in bodies:
            tasks.append(asyncio.create_task(_request(guard, body, answers)))
            await asyncio.sleep(0.01)
        assert app.started == bodies[:1]  # one at a time: two wait with their bodies unread
        assert answers == {bodies[3]: 429}  # the queue is full: told to retry at once
        small = asyncio.create_task(_request(guard, b"{}", answers))
        await asyncio.sleep(0.01)
        assert app.started == [bodies[0], b"{}"]  # small requests never wait for bulk ones
        app.let_go(b"{}")
        for body in bodies[:3]:
            app.let_go(body)
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, small)
        assert app.started == [bodies[0], b"{}", bodies[1], bodies[2]]  # first come, first served
        assert [answers[b] for b in bodies] == [200, 200, 200, 429]
        assert guard.bulk_in_progress == 0 and not guard.bulk_waiting

    asyncio.run(scenario())


def test_a_bulk_request_waits_at_most_half_the_body_timeout_then_is_told_to_retry():
    async def scenario() -> None:
        app, answers = Held(), {}
        guard = _guard(app, bulk_queue=4, body_timeout_s=0.1)
        first = asyncio.create_task(_request(guard, BULK + b"1", answers))
        await asyncio.sleep(0.01)
        await _request(guard, BULK + b"2", answers)  # waits 0.05 s, then gives up its place
        assert answers == {BULK + b"2": 429} and not guard.bulk_waiting
        app.let_go(BULK + b"1")
        await first
        assert answers[BULK + b"1"] == 200 and guard.bulk_in_progress == 0

    asyncio.run(scenario())


def test_a_waiting_bulk_request_that_is_cancelled_gives_up_its_place():
    async def scenario() -> None:
        app, answers = Held(), {}
        guard = _guard(app, bulk_queue=4)
        first = asyncio.create_task(_request(guard, BULK + b"1", answers))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(_request(guard, BULK + b"2", answers))
        third = asyncio.create_task(_request(guard, BULK + b"3", answers))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert len(guard.bulk_waiting) == 1
        app.let_go(BULK + b"1")
        app.let_go(BULK + b"3")
        await asyncio.gather(first, third)
        assert app.started == [BULK + b"1", BULK + b"3"]
        assert answers == {BULK + b"1": 200, BULK + b"3": 200}
        assert guard.bulk_in_progress == 0 and not guard.bulk_waiting

    asyncio.run(scenario())
