"""The containerized deploy, for real: the bento image from `bentoml containerize`, the compose stack (api, trainer,
jupyter) on fresh volumes, training in the jupyter container, reload, and persistence across down/up.

Needs a Docker engine and compose (v2 `docker compose` or v1 `docker-compose`); skips with the reason otherwise
(`.ci/run` starts one with ../shared/docker/up). Everything gets a unique compose project, unique image tags and
free loopback ports, and is removed at the end (containers, volumes, images). A first run builds the images
(several minutes); later runs reuse Docker's layer cache.

    uv run pytest -m container
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import endpoint_name, model_name
from penguins.training import ALGORITHMS
from penguins.ui import STATIC
from tests.compose import COMPOSE, VARIANTS, WHY_NOT, Stack, require
from tests.tiers import unavailable

pytestmark = [pytest.mark.container, pytest.mark.integration]

STORE = "/home/bentoml/models"
LOGS = "/home/bentoml/logs"

if COMPOSE is None:
    unavailable(f"container tests need a Docker engine: {WHY_NOT}", module=True)


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    require(request.param)  # Compose v1 and v2: every test runs with each
    stack = Stack(tmp_path_factory.mktemp("bento-home"), compose=request.param)
    try:
        stack.deploy("build")  # bentoml build -> bentoml containerize -> compose build
        yield stack
    finally:
        stack.remove()


def logged(stack: Stack) -> list[dict]:
    """Every line of the API's prediction logs, read inside the api container from the logs volume."""
    listing = stack.exec("api", "sh", "-c", f"ls {LOGS}/predictions-*.jsonl*")
    assert listing.split(), f"no prediction log in {LOGS}"
    text = stack.exec("api", "sh", "-c", f"cat {LOGS}/predictions-*.jsonl")
    return [json.loads(line) for line in text.splitlines()]


def test_the_api_starts_on_an_empty_store_and_reports_not_ready(stack):
    stack.compose("up", "-d", "api")
    stack.wait_for("/livez", 120)
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 503
    answer = httpx.post(f"{stack.url}/classify", json={"penguins": [EXAMPLE_PENGUIN]}, timeout=10)
    assert answer.status_code == 503 and "no penguin model is loaded" in answer.json()["error"]
    # Healthcheck: the image's own python (no curl there) reports the 503 as unhealthy, not as an error to run.
    probe = stack.compose(
        "exec",
        "-T",
        "api",
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=5)",
        check=False,
    )
    assert probe.returncode != 0 and "503" in probe.stderr + probe.stdout


def test_up_on_an_empty_volume_ends_serving_every_model(stack):
    stack.deploy("up", "--no-build")  # trainer fills the store and calls reload with the token; waits for /readyz
    assert "reloaded: serving" in stack.compose("logs", "trainer").stdout
    with stack.client() as client:
        for algorithm in ALGORITHMS:
            [answer] = getattr(client, endpoint_name(algorithm))(penguins=[EXAMPLE_PENGUIN])
            assert answer["species"] == "Gentoo", algorithm
            assert answer["model"].startswith(f"{model_name(algorithm)}:")
        assert {p["species"] for p in client.classify(penguins=[EXAMPLE_PENGUIN])} == {"Gentoo"}
        explained = client.explain(penguin=EXAMPLE_PENGUIN, model="knn", k=3)
        assert explained["prediction"]["species"] == "Gentoo" and len(explained["neighbours"]) == 3
    assert sorted(stack.served_tags()) == sorted(ALGORITHMS)
    assert stack.health("api") == "healthy"  # the compose healthcheck passes once models are served


def test_the_web_page_is_served_by_the_container(stack):
    page = httpx.get(f"{stack.url}/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert sorted(assets) == ["static/app.js", "static/style.css"]
    for asset in assets:
        answer = httpx.get(f"{stack.url}/ui/{asset}", timeout=10)
        assert answer.status_code == 200 and answer.content == (STATIC / asset.removeprefix("static/")).read_bytes()
    assert httpx.get(f"{stack.url}/ui", timeout=10, follow_redirects=True).text == page.text


def test_predictions_land_in_the_logs_volume(stack):
    request_id = f"container-log-{uuid.uuid4().hex[:8]}"
    answer = httpx.post(
        f"{stack.url}/classify_svm", json={"penguins": [EXAMPLE_PENGUIN]}, headers={"x-request-id": request_id}
    )
    assert answer.status_code == 200
    lines = logged(stack)
    [line] = [entry for entry in lines if entry["request_id"] == request_id]
    assert line["route"] == "/classify_svm" and line["model"] == answer.json()[0]["model"]
    assert line["input"] == {"penguins": [EXAMPLE_PENGUIN]} and line["output"] == answer.json()
    # Everything answered before was logged too: the per-model classifications and the generic one.
    assert {entry["route"] for entry in lines} >= {f"/{endpoint_name(a)}" for a in ALGORITHMS} | {"/classify"}


def test_containers_share_the_store_as_one_user_without_world_access(stack):
    for service in ("api", "jupyter"):
        assert stack.exec(service, "id", "-u").strip() == "1034"
        assert stack.exec(service, "id", "-g").strip() == "1034"
    tag = stack.served_tags()["random-forest"]
    name, version = tag.split(":")
    for service in ("api", "jupyter"):
        listing = stack.exec(service, "stat", "-c", "%u:%g %a", STORE, f"{STORE}/{name}/{version}", LOGS)
        store, model, logs = listing.split("\n")[:3]
        assert store.startswith("1034:1034 ") and model == "1034:1034 700" and logs.startswith("1034:1034 ")
        assert not store.endswith("7") and not logs.endswith("7"), "no world-writable volume"
    assert stack.exec("api", "printenv", "PENGUINS_LOG_DIR").strip() == LOGS


def test_training_in_jupyter_then_reload_serves_the_new_version(stack):
    before = stack.served_tags()
    # The default seed: the new version scores what the served one does, so the promotion gate promotes it.
    stack.exec("jupyter", "python", "train.py", "--models", "random-forest")
    assert stack.served_tags() == before, "nothing changes before reload"

    assert httpx.post(f"{stack.url}/reload", timeout=30).status_code == 401  # the admin token is required
    with stack.client(token=stack.admin_token) as client:
        report = client.reload()
    [update] = report["updated"]
    assert update["name"] == "penguins-random-forest" and update["from"] == before["random-forest"]
    with stack.client() as client:
        [answer] = client.classify_random_forest(penguins=[EXAMPLE_PENGUIN])
    assert answer["model"] == update["to"] != before["random-forest"]


def test_the_training_notebook_runs_in_jupyter_and_reloads_the_api(stack):
    before = stack.served_tags()
    stack.exec(
        "jupyter",
        "env",
        "PENGUINS_NOTEBOOK_MODELS=knn",
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--output",
        "/tmp/02-train.out.ipynb",
        "notebooks/02-train.ipynb",
        timeout=900,
    )
    after = stack.served_tags()  # the notebook called reload itself, with the token from its environment
    assert after["knn"] != before["knn"]
    # The notebook's "your own classifier" section saves extra-trees: a new version, served under its own name.
    assert after["extra-trees"] != before.get("extra-trees")
    trained = ("knn", "extra-trees")
    assert {a: t for a, t in after.items() if a not in trained} == {a: t for a, t in before.items() if a not in trained}


def test_models_and_logs_persist_across_down_and_up(stack):
    before = stack.served_tags()
    logged_before = logged(stack)
    assert logged_before, "predictions were logged before down"
    stack.deploy("down")
    assert stack.compose("ps", "-q").stdout.strip() == ""
    stack.deploy("up", "--no-build")
    assert stack.served_tags() == before
    assert "nothing to train" in stack.compose("logs", "trainer").stdout
    assert logged(stack) == logged_before, "the prediction log survived down/up"
    with stack.client() as client:
        [answer] = client.classify_knn(penguins=[EXAMPLE_PENGUIN])
    after = logged(stack)
    assert after[: len(logged_before)] == logged_before and after[-1]["model"] == answer["model"]


def test_a_stack_whose_run_was_killed_is_removed_by_the_next_run(tmp_path):
    """A run killed before its teardown leaves its containers (which dockerd restarts when it starts): the next run's
    first stack removes every test project whose process is gone, and nothing that is still owned."""
    from tests import compose

    def create(project: str) -> str:
        label = f"com.docker.compose.project={project}"
        command = ["docker", "create", "--label", label, "python:3.11-slim", "true"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    dead = subprocess.Popen(["true"])
    dead.wait()
    compose.OWNERS.mkdir(exist_ok=True)
    abandoned, owned = f"{compose.PROJECT_PREFIX}killed{os.getpid()}", f"{compose.PROJECT_PREFIX}alive{os.getpid()}"
    (compose.OWNERS / abandoned).write_text(str(dead.pid))
    (compose.OWNERS / owned).write_text(str(os.getpid()))
    gone, kept = create(abandoned), create(owned)
    try:
        compose._swept = False
        assert abandoned in compose.sweep_abandoned()
        listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True).stdout.split()
        assert gone not in listed and kept in listed
    finally:
        subprocess.run(["docker", "rm", "-f", gone, kept], capture_output=True)
        (compose.OWNERS / owned).unlink(missing_ok=True)
