"""The fixes to BentoML 1.4.39's serving internals (penguins/workarounds.py), on BentoML's own classes, and the frozen
start-up heap."""

import asyncio
import contextvars
import gc
import os
import socket
import sys
import weakref

import pytest
import uvloop
from bentoml._internal.marshal.dispatcher import Optimizer
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from penguins import workarounds
from penguins.settings import get_settings

REQUEST_STATE = contextvars.ContextVar("request_state")


class RequestState:
    """Stands for what a request's context holds in the server (its tracing span, ...)."""


def test_the_service_applies_them_when_it_starts(client):
    # First in this file: the tests below apply them themselves.
    from _bentoml_sdk.method import APIMethod
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    assert hasattr(Optimizer.trigger_refresh, "__wrapped__")
    assert getattr(TimeoutMiddleware.__call__, "releases_timer", False)
    assert getattr(CorkDispatcher._get_inputs, "keeps_requests_whole", False)
    assert getattr(APIMethod._local_call, "binds_once", False)
    assert gc.get_freeze_count() > 50_000  # the libraries and models it loaded: out of every later collection


def test_a_model_a_reload_drops_is_freed_without_the_collector(store_dir):
    """Frozen objects are never collected: a model frozen at start-up must be freed by reference counting alone when a
    reload replaces it, so no loaded model may leave a reference cycle behind."""
    from penguins.store import load, scan

    for stored in scan(store_dir)[0]:
        for compiled in (True, False):
            model = load(stored, compiled)
            gc.collect()  # what loading left behind, not the model
            gc.disable()
            try:
                dropped = weakref.ref(model)
                del model  # as a reload drops the model it replaces
                assert dropped() is None and gc.collect() == 0, f"{stored.name} (compiled={compiled}) holds a cycle"
            finally:
                gc.enable()


def test_batching_never_learns_to_hold_a_request_longer_than_the_configured_wait():
    """After heavy load BentoML's dispatcher had learned waits of ~15 ms and held every lone request that long."""
    cap_s = get_settings().max_batch_wait_ms / 1000
    workarounds.apply(get_settings().max_batch_wait_ms)
    workarounds.apply(get_settings().max_batch_wait_ms)  # BentoML's method is wrapped once, however often applied
    assert not hasattr(Optimizer.trigger_refresh.__wrapped__, "__wrapped__")

    optimizer = Optimizer(max_latency=10.0)
    for n in (1, 4, 16) * 20:  # the history a burst leaves: batches that queued 30 ms each
        optimizer.o_stat.append((n, 0.0002 * n + 0.001, 0.030))
    optimizer.trigger_refresh()
    assert optimizer.wait == cap_s
    assert optimizer.o_a == pytest.approx(0.0002) and optimizer.o_b == pytest.approx(0.001)  # the rest still learned

    optimizer.o_stat.clear()
    optimizer.o_stat.extend([(1, 0.001, cap_s / 4)] * 10)  # below the cap, BentoML's own figure stands
    optimizer.trigger_refresh()
    assert optimizer.wait == pytest.approx(cap_s / 4)


async def _answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _slow(scope, receive, send):
    await asyncio.sleep(10)


async def _request(app, timeout: float = 60) -> tuple[list[dict], weakref.ref]:
    """One request through BentoML's TimeoutMiddleware in a task of its own, as uvicorn runs it, with state in its
    context set outside the middleware (as BentoML's tracing does); the messages sent and a weak reference to that
    state."""
    return await asyncio.create_task(_in_context(app, timeout), context=contextvars.copy_context())


async def _in_context(app, timeout: float) -> tuple[list[dict], weakref.ref]:
    state = RequestState()
    REQUEST_STATE.set(state)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await TimeoutMiddleware(app, timeout=timeout)({"type": "http", "path": "/"}, None, send)
    return sent, weakref.ref(state)


def test_an_answered_request_leaves_nothing_alive_behind():
    """BentoML left each request's timeout timer running, and with it the request's context, for the whole timeout."""
    workarounds.apply(get_settings().max_batch_wait_ms)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the server's loop (uvicorn picks uvloop)
        results = [runner.run(_request(_answer)) for _ in range(20)]
        gc.collect()
        assert all(sent[0]["status"] == 200 for sent, _ in results)
        assert [state() for _, state in results] == [None] * 20


def test_a_request_still_times_out_with_a_504():
    workarounds.apply(get_settings().max_batch_wait_ms)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sent, _ = runner.run(_request(_slow, timeout=0.05))
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]


def test_a_second_worker_listens_on_its_own_socket_of_the_same_address(monkeypatch):
    """What spread_connections does to the listening socket a BentoML worker inherits (`--fd N`): the first worker
    keeps it, the others put a socket of their own, on the same address and in one SO_REUSEPORT group, in its place;
    new connections then go to both."""
    shared = socket.create_server(("127.0.0.1", 0))
    inherited = os.dup(shared.fileno())  # the descriptor number a worker was handed
    worker = ["/venv/site-packages/_bentoml_impl/worker/service.py", "--fd", str(inherited)]
    try:
        monkeypatch.setattr(sys, "argv", worker)
        assert workarounds.spread_connections(1) is False  # the first worker keeps the shared socket
        assert os.fstat(inherited).st_ino == os.fstat(shared.fileno()).st_ino
        assert workarounds.spread_connections(2) is True
        assert os.fstat(inherited).st_ino != os.fstat(shared.fileno()).st_ino
        with socket.socket(fileno=os.dup(inherited)) as own:
            assert own.getsockname() == shared.getsockname()
            clients = [socket.create_connection(shared.getsockname()) for _ in range(64)]
            accepted = {name: _accept_all(sock) for name, sock in (("shared", shared), ("own", own))}
            for client in clients:
                client.close()
        assert accepted["shared"] + accepted["own"] == 64 and min(accepted.values()) > 0, accepted

        monkeypatch.setattr(sys, "argv", ["service.py", "--fd", str(inherited)])  # not BentoML's worker: untouched
        assert workarounds.spread_connections(2) is False
    finally:
        os.close(inherited)
        shared.close()


def _accept_all(listener: socket.socket) -> int:
    listener.setblocking(False)
    accepted = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return accepted
        connection.close()
        accepted += 1


def test_a_request_larger_than_a_batch_is_never_split():
    """BentoML's dispatcher cut a 10,000-penguin request into ten 1,000-penguin batches; now a request is one batch,
    alone if it does not fit with others, and smaller requests are still combined up to max_batch_size."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    workarounds.apply(get_settings().max_batch_wait_ms)
    batches: list[list[int]] = []

    async def run() -> list:
        dispatcher = CorkDispatcher(
            max_latency_in_ms=10_000, max_batch_size=1000, fallback=lambda: None, get_batch_size=len
        )

        async def predict(jobs):
            batches.append([len(job) for job in jobs])
            await asyncio.sleep(0.01)
            return [[len(job)] * len(job) for job in jobs]

        call = dispatcher(predict)
        try:
            for _ in range(12):  # the dispatcher's warm-up batches, one request each
                await call([0])
            batches.clear()
            return await asyncio.gather(call(list(range(10_000))), *(call([0] * 300) for _ in range(6)))
        finally:
            dispatcher.shutdown()

    answers = asyncio.run(run())
    assert len(answers[0]) == 10_000 and all(len(a) == 300 for a in answers[1:])
    assert [10_000] in batches, batches  # the big request, whole, in a batch of its own
    assert all(sum(batch) <= 1000 for batch in batches if batch != [10_000])
    assert sum(len(batch) for batch in batches) == 7 and max(len(b) for b in batches) >= 2  # the others combined


def test_an_api_method_is_bound_to_its_instance_once():
    import bentoml

    workarounds.apply(get_settings().max_batch_wait_ms)

    @bentoml.service
    class Echo:
        @bentoml.api
        def echo(self, text: str = "x") -> str:
            return text

    instance, other = Echo.inner(), Echo.inner()
    method = Echo.inner.__dict__["echo"]
    caller = method._local_call(instance)
    assert method._local_call(instance) is caller and method._local_call(other) is not caller
    assert caller() == "x" and caller(text="y") == "y"  # BentoML's caller still fills in the defaults
    dropped = weakref.ref(other)
    del other
    gc.collect()
    assert dropped() is None  # the callers it keeps do not keep it alive


def test_every_patched_internal_has_the_shape_its_fix_was_written_for():
    """Fails when an upgrade changes what a fix patches (a moved class, a renamed parameter): re-check that fix."""
    assert {fix: workarounds.misfit(fix) for fix in workarounds.SHAPES} == dict.fromkeys(workarounds.SHAPES)


GUARDED = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
from penguins import workarounds
{setup}
workarounds.apply(5, big_body_bytes=1000, drain_s=1.0, connections=(5.0, 5.0, 100))
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer
from bentoml._internal.server.http.traffic import TimeoutMiddleware
print("keeps_requests_whole", getattr(CorkDispatcher._get_inputs, "keeps_requests_whole", False))
print("bound_batch_wait", hasattr(Optimizer.trigger_refresh, "__wrapped__"))
print("release_request_timers", getattr(TimeoutMiddleware.__call__, "releases_timer", False))
print("serve_apis", workarounds.serve_apis(None, {{}}) if workarounds.misfit("serve_apis") else "fits")
"""


def _guarded(setup: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", GUARDED.format(setup=setup)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_on_an_untested_bentoml_every_fix_stays_off_and_says_why():
    out = _guarded('workarounds.TESTED["bentoml"] = "1.4.40"')
    assert "keeps_requests_whole False" in out and "bound_batch_wait False" in out
    assert "release_request_timers False" in out and "serve_apis False" in out
    assert "BentoML workaround keep_requests_whole stays off: written for bentoml 1.4.40, this is 1.4.39" in out
    assert "drain_on_shutdown" not in out  # uvicorn's fixes check uvicorn's version: the tested one here


def test_a_target_of_another_shape_keeps_that_fix_off_and_the_others_on():
    setup = (
        "from bentoml._internal.marshal.dispatcher import Optimizer\n"
        "Optimizer.trigger_refresh = lambda self, now: None  # as if an upgrade added a parameter"
    )
    out = _guarded(setup)
    assert "bound_batch_wait False" in out and "keeps_requests_whole True" in out and "serve_apis fits" in out
    assert "BentoML workaround bound_batch_wait stays off: " in out and "takes ('self', 'now')" in out
