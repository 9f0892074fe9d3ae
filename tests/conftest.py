"""Shared fixtures. BentoML reads BENTOML_HOME once, on first import, so the test store is set here, first."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="penguins-tests-home-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="penguins-tests-prom-")
os.environ["PENGUINS_LOG_DIR"] = tempfile.mkdtemp(prefix="penguins-tests-logs-")
os.environ.pop("PENGUINS_MODEL_REPOSITORY", None)  # a developer's own repository must never get test models

import pytest  # noqa: E402

from penguins.contract import EXAMPLE_PENGUIN, TARGET  # noqa: E402
from penguins.data import load_penguins  # noqa: E402
from tests.harness import ROOT, SESSION_TAG, kill_tagged, session_id, tagged  # noqa: E402
from tests.tiers import unavailable  # noqa: E402

session_id()  # set before pytest-xdist starts its workers, so that they share it


@pytest.fixture(scope="session")
def frame():
    return load_penguins()


@pytest.fixture(scope="session")
def small_frame(frame):
    """Twenty penguins of each species: enough to fit every pipeline in well under a second."""
    return frame.groupby(TARGET, group_keys=False).sample(n=20, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def trained(frame):
    """Every algorithm trained on the full data and saved (through the gate: all promoted, the store is empty) into
    the session's store, once."""
    from penguins.gate import save_gated
    from penguins.training import ALGORITHMS, train

    return {algorithm: (model, save_gated(model)[0]) for algorithm in ALGORITHMS for model in [train(algorithm, frame)]}


@pytest.fixture(scope="session")
def store_dir(trained) -> Path:
    return Path(os.environ["BENTOML_HOME"]) / "models"


@pytest.fixture
def store(tmp_path, store_dir, trained) -> Path:
    """A private copy of the session store (all five models), safe to damage."""
    copy = tmp_path / "home" / "models"
    shutil.copytree(store_dir, copy)
    return copy


@pytest.fixture(scope="session")
def svc(trained):
    """The service class, imported only once the store holds every model: the in-process app's workers read the
    store as they start, so every model is served (and has its own route) from the first request on."""
    import service

    return service.PenguinClassifier


@pytest.fixture(scope="session")
def client(svc):
    from starlette.testclient import TestClient

    with TestClient(svc.to_asgi()) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return Path(os.environ["PENGUINS_LOG_DIR"])


@pytest.fixture
def example():
    return dict(EXAMPLE_PENGUIN)


# Figures that tests measure (requests under reload, fuzz cases, faults injected) are printed at the end of the run
# and saved to test-artifacts/figures.json: the README's "Reliability" section quotes them. Tests may run in xdist
# workers, so each figure goes through a file that the controlling process reads back.
FIGURES_DIR = ROOT / "test-artifacts" / "figures"


class _Figures:
    def __setitem__(self, name: str, values: dict) -> None:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        (FIGURES_DIR / f"{name.replace('/', '-')}.json").write_text(json.dumps({name: values}))


@pytest.fixture(scope="session")
def figures() -> _Figures:
    return _Figures()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controlling process: forget an earlier run's figures
        shutil.rmtree(FIGURES_DIR, ignore_errors=True)


LEFT_BEHIND: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """Fail the run when a process the tests started (a server, its workers, a database) is still alive: each test
    must stop what it started on every exit path. What is found is killed, so the next run starts clean."""
    if hasattr(session.config, "workerinput"):
        return  # the controlling process checks once every worker is done
    deadline = time.monotonic() + 15  # a server stopped just now may still be exiting
    while (alive := tagged(SESSION_TAG, session_id())) and time.monotonic() < deadline:
        time.sleep(0.5)
    if alive:
        LEFT_BEHIND.extend(f"pid {p.pid}: {' '.join(_cmdline(p))[:200]}" for p in alive)
        kill_tagged(SESSION_TAG, session_id())
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return ["?"]


def pytest_terminal_summary(terminalreporter):
    if LEFT_BEHIND:
        terminalreporter.section("processes left behind", red=True)
        for line in LEFT_BEHIND:
            terminalreporter.write_line(line)
        terminalreporter.write_line("FAILED: tests left these processes running (killed now)", red=True)
    found: dict[str, dict] = {}
    for path in sorted(FIGURES_DIR.glob("*.json")):
        found.update(json.loads(path.read_text()))
    if not found:
        return
    terminalreporter.section("figures")
    for name, values in found.items():
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    (FIGURES_DIR.parent / "figures.json").write_text(json.dumps(found, indent=2) + "\n")


def _database(start):
    from tests.databases import Unavailable

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(start())
        except Unavailable as reason:
            unavailable(str(reason))
        yield url


@pytest.fixture(scope="session")
def mariadb_server():
    """A private MariaDB server for the session (skipped, saying why, when mariadb-server is not installed)."""
    from tests.databases import mariadb

    yield from _database(mariadb)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the session (skipped, saying why, when its binaries are not installed)."""
    from tests.databases import postgres

    yield from _database(postgres)


@pytest.fixture(
    params=["sqlite", pytest.param("mariadb", marks=pytest.mark.db), pytest.param("postgresql", marks=pytest.mark.db)]
)
def db_url(request, tmp_path):
    """A database with none of this project's tables: a SQLite file, or the session's MariaDB or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'penguins.db'}"
        return
    url = request.getfixturevalue("mariadb_server" if request.param == "mariadb" else "postgres_server")
    from sqlalchemy import create_engine

    from penguins.db import metadata

    engine = create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    yield url


# Every test runs in one tier, named by a marker (pyproject.toml lists them). A test that says no tier is
# `inprocess` when it uses the service's ASGI app in this process, `unit` otherwise: together the inner loop
# (`pytest -m "unit or inprocess"`). A `unit` test starts no process (`unit_tests_start_no_process` fails it when it
# does); the others say their tier themselves (the CLI in its own process, a real server, a browser, ...).
IN_PROCESS_FIXTURES = {"client", "svc"}


def pytest_collection_modifyitems(config, items):
    tiers = {line.split(":")[0].strip() for line in config.getini("markers")}
    for item in items:
        if not {m.name for m in item.iter_markers()} & tiers:
            item.add_marker("inprocess" if IN_PROCESS_FIXTURES & set(item.fixturenames) else "unit")


# Every way a test could start a process: subprocess (and asyncio's, and os.popen, on top of it), fork, spawn, a shell.
PROCESS_STARTERS = [
    (subprocess.Popen, "__init__"),
    *((os, name) for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system") if hasattr(os, name)),
]


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request, monkeypatch):
    """A `unit` test fails when it starts a process, even one whose error the code under test swallowed. Fixtures
    of a wider scope (the session's store, servers) are set up before this one and may start what they need."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    started: list[str] = []

    def refuse(owner, name):
        def starter(*args, **kwargs):
            started.append(f"{getattr(owner, '__name__', owner)}.{name}{_first_arg(args)}")
            raise RuntimeError(f"a unit test starts no process ({name}): give the test its tier (tests/conftest.py)")

        return starter

    for owner, name in PROCESS_STARTERS:
        monkeypatch.setattr(owner, name, refuse(owner, name))
    yield
    if started:
        pytest.fail(f"this unit test started processes: {started}; mark it with its tier", pytrace=False)


def _first_arg(args: tuple) -> str:
    shown = [a for a in args if not isinstance(a, subprocess.Popen)][:1]
    return f"({str(shown[0])[:120]})" if shown else "()"
