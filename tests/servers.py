"""Start a real `bentoml serve` of this project on a free loopback port, and stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real CLI, in its own process, into the store under `home` (`check`: raise unless it exits 0)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--store", str(home), *args],
        cwd=ROOT,
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
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
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
    `timeout`. The whole group, even when the leader is gone (a test may have killed it): its children may not be."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
