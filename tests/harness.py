"""For the tests and benchmarks: start a real `bentoml serve` of this project on a free loopback port and stop it,
run the real train.py, and read what the store and the prediction log hold. Dev-only (psutil, httpx): it lives under
tests/, which the bento does not pack, and no module of the package imports it (tests/test_deploy_config.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from penguins.adapter.layout import read_latest

ROOT = Path(__file__).resolve().parents[1]

# Every process a test starts carries these in its environment, and so do its descendants: BentoML's workers run in
# sessions of their own (killpg on the server's group misses them), and outlive an arbiter that was SIGKILLed.
SESSION_TAG = "PENGUINS_TEST_SESSION_OF"  # the test session that started it (conftest checks at the end)
PROCESS_TAG = "PENGUINS_TEST_PROCESS"  # one value per started process tree


def session_id() -> str:
    """The test session's id, inherited by pytest-xdist's workers from the controlling process."""
    return os.environ.setdefault("PENGUINS_TEST_SESSION", uuid.uuid4().hex)


def tagged_env(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """`env` with this session's and a fresh process tag; returns the tag too."""
    tag = uuid.uuid4().hex
    return {**env, SESSION_TAG: session_id(), PROCESS_TAG: tag}, tag


def tagged(name: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has `name=value` (zombies, already dead, do not count)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(name) == value:
                found.append(process)
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return found


def kill_tagged(name: str, value: str, sig: int = signal.SIGKILL, timeout: float = 20) -> list[psutil.Process]:
    """Send `sig` to every process tagged so; SIGKILL what is still alive after `timeout`. Returns what was found."""
    found = tagged(name, value)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The real CLI, in its own process, into the store under `home` (`check`: raise unless it exits 0; `env`: set
    these besides the environment)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--store", str(home), *args],
        cwd=ROOT,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


@contextlib.contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str], health: str, timeout: float = 90
) -> Iterator[subprocess.Popen]:
    """Run a server command in its own process group until `health` answers 200; stop it on exit."""
    env, tag = tagged_env(env)
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    process.tag = tag  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[:4]} not live after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield process
    finally:
        stop_group(process, timeout=20)


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """Stop a process started with its own session and everything in its group: SIGTERM, then SIGKILL after
    `timeout`. The whole group, even when the leader is gone (a test may have killed it): its children may not be.
    Then every process of its tree that is left (tagged by `tagged_env`, wherever it was reparented), the same way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    tag = getattr(process, "tag", None)
    if tag is not None:
        kill_tagged(PROCESS_TAG, tag, signal.SIGTERM, timeout)


def crash(process: subprocess.Popen) -> None:
    """SIGKILL a started process and its whole tree at once, as a machine crash would: no shutdown of any kind."""
    # The leader by its group too: its proctitle (setproctitle, "circusd") can overwrite the environment that
    # /proc shows, and so its tag.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    kill_tagged(PROCESS_TAG, process.tag, signal.SIGKILL)  # type: ignore[attr-defined]
    process.wait(timeout=30)


class Server(str):
    """The base URL of a running server, which also knows the server's process (its group leader)."""

    process: subprocess.Popen

    def __new__(cls, url: str, process: subprocess.Popen) -> Server:
        server = super().__new__(cls, url)
        server.process = process
        return server


@contextlib.contextmanager
def serve(
    home: Path,
    log: Path,
    target: str = "service:PenguinClassifier",
    timeout: float = 90,
    wrap: tuple[str, ...] = (),
    **env: str,
) -> Iterator[Server]:
    """`bentoml serve <target>` over the store under `home`; yields the base URL once live. `wrap` goes before the
    command (a mount namespace, dropped capabilities): it must exec the command in the same process group."""
    port = free_port()
    environment = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PENGUINS_LOG_DIR": str(log.parent / "prediction-logs"),  # each server its own, beside its output
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server manages its own
    command = [*wrap, sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running(command, log, environment, f"{url}/livez", timeout) as process:
        yield Server(url, process)


def workers_that_answered(server_output: str, path: str) -> set[str]:
    """The worker ids in BentoML's access log lines that answered `path` with 200."""
    return {
        line.split("[entry_service:penguin_classifier:")[1].split("]")[0]
        for line in server_output.splitlines()
        if f"path={path}," in line and "status=200" in line and "[entry_service:penguin_classifier:" in line
    }


def version_dir(store: Path, algorithm: str) -> Path:
    """The folder of a model's `latest` version in a store."""
    from penguins.names import model_name

    name_dir = store / model_name(algorithm)
    return name_dir / str(read_latest(name_dir))


def read_prediction_log(directory: Path):
    """The README's one-liner."""
    import pandas as pd

    files = sorted(directory.glob("predictions-*.jsonl*"))
    return pd.concat(pd.read_json(f, lines=True) for f in files) if files else pd.DataFrame()


def tags_answering(url: str, route: str, n: int = 30) -> set[str]:
    """The model tags that answer `n` requests for the example penguin on fresh connections (so that every worker
    gets some)."""
    from penguins.contract import EXAMPLE_PENGUIN

    seen = set()
    for _ in range(n):
        with httpx.Client(base_url=url, timeout=30) as fresh:
            response = fresh.post(route, json={"penguins": [EXAMPLE_PENGUIN]})
            assert response.status_code == 200, response.text
            seen.add(response.json()[0]["model"])
    return seen
