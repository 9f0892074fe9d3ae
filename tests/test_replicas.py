"""Replicas on one store, for real: several `bentoml serve` processes, each with its own BENTOML_HOME, serve one models
folder (through symlinks, and one through a read-only bind mount in a mount namespace of its own, as a read-only
volume would be). One reload on any of them reaches every worker of every server, without traffic to the others;
a server whose store is read-only says how far its own reload got; an unreadable store is a failure that keeps the
loaded models serving.

The convergence time (reload call -> every replica serving the new version, read from each server's log while it
gets no request) is printed in the run's figures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from penguins.names import endpoint_name, model_name
from penguins.scan import STORE_FAILURE, scan
from tests.harness import run_train, serve, tags_answering, workers_that_answered
from tests.tiers import unavailable

pytestmark = pytest.mark.integration

ALGORITHM = "logistic-regression"
NAME = model_name(ALGORITHM)
ROUTE = f"/{endpoint_name(ALGORITHM)}"
# Several servers start at once (each pulling, loading, with workers): a generous bound for a loaded machine.
START = 240


def read_only_mount(source: Path, target: Path) -> tuple[str, ...]:
    """A wrapper for `serve`: the command runs in its own mount namespace where `target` is `source`, read-only.
    The mount lives and dies with that namespace: nothing is left mounted on the machine."""
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(source), str(target))


# As root, file permissions are not checked; without these two capabilities they are.
WITHOUT_PERMISSION_BYPASS = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def _needs(*tools: str) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (a mount namespace, dropping capabilities)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} (util-linux) missing")


def newest(home: Path) -> str:
    return next(m.tag for m in scan(home / "models")[0] if m.name == NAME)


def wait_for_logs(logs: dict[str, tuple[Path, int]], text: str, count: int, since: float, timeout: float = 120):
    """Per name, seconds from `since` (a monotonic time) until `text` appears `count` times in its log after its
    offset (one line per worker), all watched at once. Reads the files only: the servers get no request."""
    seen: dict[str, float] = {}
    while len(seen) < len(logs):
        for name, (log, offset) in logs.items():
            if name not in seen and log.read_text(errors="replace")[offset:].count(text) >= count:
                seen[name] = time.monotonic() - since
        if time.monotonic() - since > timeout:
            late = sorted(set(logs) - set(seen))
            raise AssertionError(f"{text!r} not logged {count} times by {late} in {timeout}s")
        time.sleep(0.05)
    return seen


def answers(url: str, n: int = 30) -> set[str]:
    return tags_answering(url, ROUTE, n)


def test_one_reload_reaches_every_server_of_a_shared_store(tmp_path, figures):
    _needs("unshare", "mount")
    shared_home = tmp_path / "shared"
    run_train(shared_home, "--models", ALGORITHM)
    shared = shared_home / "models"
    homes = {name: tmp_path / name for name in ("a", "b", "c")}
    for name in ("a", "b"):
        homes[name].mkdir()
        (homes[name] / "models").symlink_to(shared)
    (homes["c"] / "models").mkdir(parents=True)  # the mount point of the read-only store
    logs = {name: tmp_path / f"{name}.log" for name in homes}
    interval = "5"  # the default, so that the figures are the ones a user gets
    with (
        serve(homes["a"], logs["a"], timeout=START, PENGUINS_SYNC_INTERVAL_SECONDS=interval) as a,
        serve(homes["b"], logs["b"], timeout=START, PENGUINS_WORKERS="2", PENGUINS_SYNC_INTERVAL_SECONDS=interval) as b,
        serve(
            homes["c"],
            logs["c"],
            timeout=START,
            wrap=read_only_mount(shared, homes["c"] / "models"),
            PENGUINS_WORKERS="2",
            PENGUINS_SYNC_INTERVAL_SECONDS=interval,
        ) as c,
    ):
        first = newest(shared_home)
        for url in (a, b, c):
            assert answers(url, 6) == {first}
        listing = httpx.post(f"{c}/models", timeout=30).json()
        assert listing["replica"]["sync_interval_seconds"] == float(interval)

        run_train(shared_home, "--models", ALGORITHM, "--seed", "11", "--no-gate")
        second = newest(shared_home)
        assert second != first
        offsets = {name: log.stat().st_size for name, log in logs.items()}
        started = time.monotonic()
        report = httpx.post(f"{a}/reload", timeout=120).json()
        reload_seconds = time.monotonic() - started
        assert report["updated"] == [{"name": NAME, "from": first, "to": second}]
        assert report["signal"] == {
            "reaches": "every replica sharing this store",
            "written": ["store"],
            "failed": [],
            "pending": False,
        }
        # b and c get no request: each of their workers' periodic check must find the signal by itself.
        served = f"now serves {second}"
        idle = wait_for_logs({n: (logs[n], offsets[n]) for n in ("b", "c")}, served, 2, since=started)
        for url in (a, b, c):
            assert answers(url) == {second}
        for name in ("b", "c"):
            assert workers_that_answered(logs[name].read_text()[offsets[name] :], ROUTE) == {"1", "2"}, name

        # A reload on the read-only server: its own workers follow, and it says the others were not told.
        run_train(shared_home, "--models", ALGORITHM, "--seed", "12", "--no-gate")
        third = newest(shared_home)
        offset_c = logs["c"].stat().st_size
        report = httpx.post(f"{c}/reload", timeout=120).json()
        assert report["updated"] == [{"name": NAME, "from": second, "to": third}]
        signal = report["signal"]
        assert signal["written"] == ["server"] and signal["reaches"].startswith("this server's workers only")
        (failed,) = signal["failed"]
        assert failed["where"] == "store" and "Read-only file system" in failed["reason"]
        assert answers(c) == {third}
        assert workers_that_answered(logs["c"].read_text()[offset_c:], ROUTE) == {"1", "2"}
        said = {}
        for _ in range(20):  # whichever worker answers says it: the one that reloaded why, the other what it means
            with httpx.Client(timeout=30) as fresh:
                replica = fresh.post(f"{c}/models").json()["replica"]
            said[replica["worker"]] = replica["signal_error"]
        for worker, error in said.items():
            assert "Read-only file system" in error or "is not writable here" in error, (worker, error)
        assert httpx.post(f"{a}/models", timeout=30).json()["replica"]["signal_error"] is None
        assert "reload signal not written to the store" in logs["c"].read_text()
    figures["replicas: shared store"] = {
        "servers": 3,
        "workers": 5,
        "reload call s": round(reload_seconds, 2),
        "idle server (2 workers) converged s": round(idle["b"], 2),
        "idle read-only server (2 workers) converged s": round(idle["c"], 2),
        "sync interval s": float(interval),
    }


def test_an_unreadable_store_is_a_failure_that_keeps_the_loaded_models_serving(tmp_path):
    _needs("setpriv")
    home = tmp_path / "home"
    run_train(home, "--models", ALGORITHM)
    first = newest(home)
    store = home / "models"
    log = tmp_path / "serve.log"
    with serve(home, log, wrap=WITHOUT_PERMISSION_BYPASS, PENGUINS_SYNC_INTERVAL_SECONDS="1") as url:
        assert answers(url, 3) == {first}
        os.chmod(store, 0)
        try:
            report = httpx.post(f"{url}/reload", timeout=120).json()
            (failure,) = report["failed"]
            assert failure["name"] == STORE_FAILURE and "PermissionError" in failure["reason"]
            assert report["serving"] == [first] and report["removed"] == []
            assert answers(url, 3) == {first}
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            listing = httpx.post(f"{url}/models", timeout=30).json()
            assert [m["tag"] for m in listing["models"]] == [first]
            assert [f["name"] for f in listing["failures"]] == [STORE_FAILURE]
            # The reload signal in that store cannot be read either, and the listing says so.
            assert "cannot read" in listing["replica"]["signal_error"]
        finally:
            os.chmod(store, 0o755)
        # Readable again: the periodic check reads it again by itself; no reload is needed to clear the failure.
        deadline = time.monotonic() + 60
        while httpx.post(f"{url}/models", timeout=30).json()["failures"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert httpx.post(f"{url}/models", timeout=30).json()["failures"] == []
    assert re.search(r"cannot read the model store .*PermissionError", log.read_text())


def test_the_signal_is_invisible_to_bentomls_own_store_commands(tmp_path):
    """The signal and the pull lock sit in the shared models folder: BentoML's CLI must not mind them."""
    home = tmp_path / "home"
    run_train(home, "--models", ALGORITHM)
    with serve(home, tmp_path / "serve.log") as url:
        assert httpx.post(f"{url}/reload", timeout=120).json()["signal"]["written"] == ["store"]
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    tag = newest(home)
    exported = tmp_path / "exported.bentomodel"
    for command in (["list"], ["export", tag, str(exported)], ["delete", "-y", tag], ["import", str(exported)]):
        done = subprocess.run(
            [sys.executable, "-m", "bentoml", "models", *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert newest(home) == tag and (home / "models" / ".penguins-reload").is_file()
