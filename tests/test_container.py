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
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.store import endpoint_name
from penguins.training import ALGORITHMS
from penguins.ui import STATIC
from tests.servers import free_port

pytestmark = [pytest.mark.container, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"
ADMIN_TOKEN = "container-test-admin-token"
STORE = "/home/bentoml/models"
LOGS = "/home/bentoml/logs"


def _engine() -> tuple[list[str] | None, str]:
    """The compose command, or None and why not."""
    if shutil.which("docker") is None:
        return None, "no docker client on PATH (../shared/docker/up installs one)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return None, "no Docker engine answers `docker info` (start one with ../shared/docker/up)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"], ""
    if shutil.which("docker-compose"):
        return ["docker-compose"], ""
    return None, "neither `docker compose` nor `docker-compose` is installed"


COMPOSE, WHY_NOT = _engine()
if COMPOSE is None:
    pytest.skip(f"container tests need a Docker engine: {WHY_NOT}", allow_module_level=True)


class Stack:
    """One compose project of this repository's docker-compose.yml, driven like a user would."""

    def __init__(self, home: Path):
        suffix = uuid.uuid4().hex[:8]
        self.project = f"penguins-test-{suffix}"
        self.api_port, self.jupyter_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PENGUINS_", "JUPYTER_", "COMPOSE_"))},
            "BENTOML_HOME": str(home),  # where `bentoml build` keeps the bento
            "BENTOML_DO_NOT_TRACK": "true",
            "COMPOSE": " ".join(COMPOSE),
            "COMPOSE_PROJECT_NAME": self.project,
            "PENGUINS_API_PORT": str(self.api_port),
            "JUPYTER_PORT": str(self.jupyter_port),
            "PENGUINS_API_IMAGE": f"penguins-api:test-{suffix}",
            "PENGUINS_JUPYTER_IMAGE": f"penguins-jupyter:test-{suffix}",
            "PENGUINS_ADMIN_TOKEN": ADMIN_TOKEN,
            "JUPYTER_TOKEN": f"jupyter-{suffix}",
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def deploy(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return self.run(str(DEPLOY), *args, timeout=timeout)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(*COMPOSE, *args, timeout=timeout, check=check)

    def exec(self, service: str, *command: str, timeout: float = 600) -> str:
        return self.compose("exec", "-T", service, *command, timeout=timeout).stdout

    def client(self, **kwargs):
        import bentoml

        return bentoml.SyncHTTPClient(self.url, **kwargs)

    def wait_live(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/livez", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"api not live after {timeout}s:\n{self.compose('logs', 'api', check=False).stdout}")

    def health(self, service: str, timeout: float = 180) -> str:
        """The container's healthcheck status once it reports healthy (checks run every 10 s), or at the timeout."""
        container = self.compose("ps", "-q", service).stdout.strip()
        deadline = time.monotonic() + timeout
        while True:
            status = self.run("docker", "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            if status == "healthy" or time.monotonic() > deadline:
                return status
            time.sleep(2)

    def remove(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        for image in (self.env["PENGUINS_API_IMAGE"], self.env["PENGUINS_JUPYTER_IMAGE"]):
            self.run("docker", "image", "rm", "--force", image, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("bento-home"))
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


def served_tags(stack: Stack) -> dict[str, str]:
    with stack.client(server_ready_timeout=0) as client:
        return {m["algorithm"]: m["tag"] for m in client.models()["models"]}


def test_the_api_starts_on_an_empty_store_and_reports_not_ready(stack):
    stack.compose("up", "-d", "api")
    stack.wait_live()
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
            assert answer["model"].startswith(f"penguins-{algorithm}:")
        assert {p["species"] for p in client.classify(penguins=[EXAMPLE_PENGUIN])} == {"Gentoo"}
        explained = client.explain(penguin=EXAMPLE_PENGUIN, model="knn", k=3)
        assert explained["prediction"]["species"] == "Gentoo" and len(explained["neighbours"]) == 3
    assert sorted(served_tags(stack)) == sorted(ALGORITHMS)
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
    tag = served_tags(stack)["random-forest"]
    name, version = tag.split(":")
    for service in ("api", "jupyter"):
        listing = stack.exec(service, "stat", "-c", "%u:%g %a", STORE, f"{STORE}/{name}/{version}", LOGS)
        store, model, logs = listing.split("\n")[:3]
        assert store.startswith("1034:1034 ") and model == "1034:1034 700" and logs.startswith("1034:1034 ")
        assert not store.endswith("7") and not logs.endswith("7"), "no world-writable volume"
    assert stack.exec("api", "printenv", "PENGUINS_LOG_DIR").strip() == LOGS


def test_training_in_jupyter_then_reload_serves_the_new_version(stack):
    before = served_tags(stack)
    # The default seed: the new version scores what the served one does, so the promotion gate promotes it.
    stack.exec("jupyter", "python", "train.py", "--models", "random-forest")
    assert served_tags(stack) == before, "nothing changes before reload"

    assert httpx.post(f"{stack.url}/reload", timeout=30).status_code == 401  # the admin token is required
    with stack.client(token=ADMIN_TOKEN) as client:
        report = client.reload()
    [update] = report["updated"]
    assert update["name"] == "penguins-random-forest" and update["from"] == before["random-forest"]
    with stack.client() as client:
        [answer] = client.classify_random_forest(penguins=[EXAMPLE_PENGUIN])
    assert answer["model"] == update["to"] != before["random-forest"]


def test_the_training_notebook_runs_in_jupyter_and_reloads_the_api(stack):
    before = served_tags(stack)
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
    after = served_tags(stack)  # the notebook called reload itself, with the token from its environment
    assert after["knn"] != before["knn"]
    assert {a: t for a, t in after.items() if a != "knn"} == {a: t for a, t in before.items() if a != "knn"}


def test_models_and_logs_persist_across_down_and_up(stack):
    before = served_tags(stack)
    logged_before = logged(stack)
    assert logged_before, "predictions were logged before down"
    stack.deploy("down")
    assert stack.compose("ps", "-q").stdout.strip() == ""
    stack.deploy("up", "--no-build")
    assert served_tags(stack) == before
    assert "nothing to train" in stack.compose("logs", "trainer").stdout
    assert logged(stack) == logged_before, "the prediction log survived down/up"
    with stack.client() as client:
        [answer] = client.classify_knn(penguins=[EXAMPLE_PENGUIN])
    after = logged(stack)
    assert after[: len(logged_before)] == logged_before and after[-1]["model"] == answer["model"]
