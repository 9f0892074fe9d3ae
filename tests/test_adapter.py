"""The fixes to BentoML's serving internals (penguins/adapter), on BentoML's own classes; their guards, which judge
a target by its shape, never by a version; and the frozen start-up heap."""

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

from penguins import adapter
from penguins.adapter import guard
from penguins.settings import get_settings

REQUEST_STATE = contextvars.ContextVar("request_state")


class RequestState:
    """Stands for what a request's context holds in the server (its tracing span, ...)."""


def test_the_service_applies_them_when_it_starts(client):
    # First in this file: the tests below apply them themselves.
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    assert getattr(Optimizer.trigger_refresh, "bounds_wait", False)
    assert getattr(TimeoutMiddleware.__call__, "releases_timer", False)
    assert getattr(CorkDispatcher._get_inputs, "keeps_requests_whole", False)
    listing = client.post("/models").json()["fixes"]
    assert [f["name"] for f in listing["fixes"] if not f["on"]] == [] and len(listing["fixes"]) == len(adapter.FIXES)
    assert listing["versions"]["bentoml"] == guard.installed("bentoml")
    assert gc.get_freeze_count() > 50_000  # the libraries and models it loaded: out of every later collection


def test_a_model_a_reload_drops_is_freed_without_the_collector(store_dir):
    """Frozen objects are never collected: a model frozen at start-up must be freed by reference counting alone when a
    reload replaces it, so no loaded model may leave a reference cycle behind."""
    from penguins.loaded import load
    from penguins.scan import scan

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
    adapter.apply(get_settings().max_batch_wait_ms)
    adapter.apply(get_settings().max_batch_wait_ms)  # BentoML's method is wrapped once, however often applied
    assert not hasattr(Optimizer.trigger_refresh.__penguins_original__, "__penguins_original__")

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
    adapter.apply(get_settings().max_batch_wait_ms)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the server's loop (uvicorn picks uvloop)
        results = [runner.run(_request(_answer)) for _ in range(20)]
        gc.collect()
        assert all(sent[0]["status"] == 200 for sent, _ in results)
        assert [state() for _, state in results] == [None] * 20


def test_a_request_still_times_out_with_a_504():
    adapter.apply(get_settings().max_batch_wait_ms)
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
        assert adapter.spread_connections(1) is False  # the first worker keeps the shared socket
        assert os.fstat(inherited).st_ino == os.fstat(shared.fileno()).st_ino
        assert adapter.spread_connections(2) is True
        assert os.fstat(inherited).st_ino != os.fstat(shared.fileno()).st_ino
        with socket.socket(fileno=os.dup(inherited)) as own:
            assert own.getsockname() == shared.getsockname()
            clients = [socket.create_connection(shared.getsockname()) for _ in range(64)]
            accepted = {name: _accept_all(sock) for name, sock in (("shared", shared), ("own", own))}
            for client in clients:
                client.close()
        assert accepted["shared"] + accepted["own"] == 64 and min(accepted.values()) > 0, accepted

        monkeypatch.setattr(sys, "argv", ["service.py", "--fd", str(inherited)])  # not BentoML's worker: untouched
        assert adapter.spread_connections(2) is False
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

    adapter.apply(get_settings().max_batch_wait_ms)
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


def test_the_service_s_own_api_callers_are_bound_once_and_still_answer():
    """BentoML's APIMethod.__get__ built a new caller (inspect.signature, functools.wraps) on every access, twice per
    request; `bind_once` keeps one per API on the instance (a non-data descriptor yields to it): nothing patched."""
    import bentoml

    @bentoml.service
    class Echo:
        @bentoml.api
        def echo(self, text: str = "x") -> str:
            return text

    instance, other = Echo.inner(), Echo.inner()
    adapter.bind_once(instance, list(Echo.apis))
    assert instance.echo is instance.echo and other.echo is not other.echo
    assert instance.echo.local() == "x" and instance.echo.local(text="y") == "y"  # BentoML's caller fills defaults
    dropped = weakref.ref(other)
    del other
    gc.collect()
    assert dropped() is None


def test_every_fix_fits_the_installed_bentoml_and_uvicorn():
    """Fails when an upgrade changes what a fix patches (a moved class, a renamed parameter, code that no longer
    reads what the fix relies on): CI's upgrade canary runs this on the newest BentoML 1.4.x and uvicorn."""
    assert {name: adapter.misfit(name) for name in adapter.FIXES} == dict.fromkeys(adapter.FIXES)
    assert len([f for f in adapter.FIXES.values() if f.patch]) <= 9  # the budget of patches (docs/upstream.md)


def test_an_untested_version_turns_no_fix_off_and_is_reported(monkeypatch):
    monkeypatch.setattr(guard, "TESTED", {d: ("0.0.1",) for d in guard.TESTED})
    guard.untested_versions.cache_clear()
    try:
        report = guard.status()
        assert report.untested and set(report.versions) == {"bentoml", "uvicorn"}
        assert all(f.on and f.why_off is None for f in report.fixes)
    finally:
        guard.untested_versions.cache_clear()


def _targets() -> list:
    return [
        pytest.param(fix, target, id=f"{fix.name}:{target.attribute}")
        for fix in guard.FIXES.values()
        for target in fix.targets
    ]


def _owner(target):
    import importlib

    owner = importlib.import_module(target.module)
    *path, name = target.attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


@pytest.mark.parametrize(("fix", "target"), _targets())
def test_a_moved_target_keeps_its_fix_off_with_the_reason(monkeypatch, fix, target):
    import importlib

    module = importlib.import_module(target.module)
    top = target.attribute.split(".")[0]
    monkeypatch.delattr(module, top)  # as if an upgrade moved what the fix patches to another module
    assert f"{target.module}.{target.attribute} is gone" in target.misfit()
    assert guard.misfit(fix.name) is not None


@pytest.mark.parametrize(("fix", "target"), [p for p in _targets() if p.values[1].params is not None])
def test_a_reshaped_target_keeps_its_fix_off_with_the_reason(monkeypatch, fix, target):
    owner, name = _owner(target)
    monkeypatch.setattr(owner, name, lambda self, added_by_an_upgrade: None)  # as if an upgrade changed it
    assert "takes ('self', 'added_by_an_upgrade')" in target.misfit()
    assert guard.misfit(fix.name) is not None


@pytest.mark.parametrize(("fix", "target"), [p for p in _targets() if p.values[1].uses])
def test_a_target_that_no_longer_does_what_its_fix_relies_on_keeps_it_off(monkeypatch, fix, target):
    owner, name = _owner(target)
    params = target.params or ()
    stand_in = eval(f"lambda {', '.join(params)}: None")  # the same parameters, none of the names it used
    monkeypatch.setattr(owner, name, type(name, (), {}) if target.params is None else stand_in)
    assert "no longer uses" in target.misfit()
    assert guard.misfit(fix.name) is not None


def test_bentoml_s_traceback_for_a_client_error_is_one_debug_line():
    import logging

    from pydantic import BaseModel, ValidationError

    from penguins.logs import BENTOML_HTTP_LOGGER, ClientErrors

    class Model(BaseModel):
        x: int

    try:
        Model(x="no")
    except ValidationError:
        client = logging.LogRecord(
            BENTOML_HTTP_LOGGER, logging.ERROR, "", 0, "Exception on %s [%s]", ("/x", "POST"), sys.exc_info()
        )
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        server = logging.LogRecord(
            BENTOML_HTTP_LOGGER, logging.ERROR, "", 0, "Exception on %s [%s]", ("/x", "POST"), sys.exc_info()
        )
    assert ClientErrors().filter(client) is False and ClientErrors().filter(server) is True


GUARDED = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from penguins import adapter
{setup}
adapter.apply(5, big_body_bytes=1000, drain_s=1.0, connections=(5.0, 5.0, 100))
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer
from bentoml._internal.server.http.traffic import TimeoutMiddleware
print("keeps_requests_whole", getattr(CorkDispatcher._get_inputs, "keeps_requests_whole", False))
print("bound_batch_wait", getattr(Optimizer.trigger_refresh, "bounds_wait", False))
print("release_request_timers", getattr(TimeoutMiddleware.__call__, "releases_timer", False))
"""


@pytest.mark.cli
def test_a_worker_with_a_reshaped_target_keeps_that_fix_off_says_why_and_applies_the_others():
    import subprocess

    setup = (
        "from bentoml._internal.marshal.dispatcher import Optimizer\n"
        "Optimizer.trigger_refresh = lambda self, now: None  # as if an upgrade added a parameter"
    )
    done = subprocess.run(
        [sys.executable, "-c", GUARDED.format(setup=setup)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "bound_batch_wait False" in out and "keeps_requests_whole True" in out
    assert "release_request_timers True" in out
    assert "Workaround bound_batch_wait stays off: " in out and "takes ('self', 'now')" in out
    assert f"Workarounds (BentoML, uvicorn) on bentoml {guard.installed('bentoml')}" in out
    assert f"{len(adapter.FIXES) - 1} of {len(adapter.FIXES)}; off: bound_batch_wait" in out


def test_a_store_layout_bentoml_no_longer_uses_shows_as_off(monkeypatch):
    from bentoml._internal.tag import Tag

    assert adapter.misfit("store_layout") is None and not adapter.FIXES["store_layout"].patch
    monkeypatch.setattr(Tag, "latest_path", lambda self: f"{self.name}/.latest")  # as if BentoML renamed the file
    assert "Tag lays out ('name/version', 'name/.latest'), not ('name/version', 'name/latest')" in adapter.misfit(
        "store_layout"
    )
