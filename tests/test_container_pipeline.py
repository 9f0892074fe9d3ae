"""The compose `pipeline` profile, for real: the whole stack plus MariaDB and Airflow on fresh volumes; Airflow lists
the DAG behind its login, a run triggered through Airflow's REST API (what the UI's Trigger button calls) ingests
into MariaDB, cleans, trains from the clean table, gates and reloads the API, and the API then serves the versions
that run trained, whose metadata names the MariaDB table and the fingerprint of its rows.

Needs a Docker engine and compose (v2 `docker compose` or v1 `docker-compose`); skips with the reason otherwise
(`.ci/run` starts one with ../shared/docker/up). A unique compose project, unique image tags and free loopback
ports; everything is removed at the end (containers, volumes, the tagged images; their build layers stay in
Docker's cache so the next run builds fast).

    uv run pytest tests/test_container_pipeline.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.store import endpoint_name, model_name
from penguins.training import ALGORITHMS
from tests.servers import free_port

pytestmark = [pytest.mark.container, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"
DAG = "penguins_retrain"
TASKS = ["ingest", "clean", "train", "gate", "reload"]
RETRAINED = ["logistic-regression", "knn"]  # what the triggered run trains (the run's `models` parameter)


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


class PipelineStack:
    """One compose project of docker-compose.yml with the pipeline profile, driven like a user would."""

    def __init__(self, home: Path):
        suffix = uuid.uuid4().hex[:8]
        self.project = f"penguins-pipeline-test-{suffix}"
        self.api_port, self.jupyter_port, self.airflow_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.airflow = f"http://127.0.0.1:{self.airflow_port}"
        self.admin_token = f"admin-{uuid.uuid4().hex}"
        self.airflow_user, self.airflow_password = "penguin-admin", f"airflow-{uuid.uuid4().hex}"
        self.images = {
            "PENGUINS_API_IMAGE": f"penguins-api:test-{suffix}",
            "PENGUINS_JUPYTER_IMAGE": f"penguins-jupyter:test-{suffix}",
            "PENGUINS_MARIADB_IMAGE": f"penguins-mariadb:test-{suffix}",
            "PENGUINS_AIRFLOW_IMAGE": f"penguins-airflow:test-{suffix}",
        }
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PENGUINS_", "JUPYTER_", "COMPOSE_", "AIRFLOW_", "AIRFLOW__"))
            },
            **self.images,
            "BENTOML_HOME": str(home),  # where `bentoml build` keeps the bento
            "BENTOML_DO_NOT_TRACK": "true",
            "COMPOSE": " ".join(COMPOSE),
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_PROFILES": "pipeline",  # scripts/deploy's compose calls see the profile too
            "PENGUINS_API_PORT": str(self.api_port),
            "JUPYTER_PORT": str(self.jupyter_port),
            "AIRFLOW_PORT": str(self.airflow_port),
            "PENGUINS_ADMIN_TOKEN": self.admin_token,
            "JUPYTER_TOKEN": f"jupyter-{suffix}",
            # Not URL-safe on purpose: the airflow entry point percent-encodes it into the DAG's database URL.
            "PENGUINS_DB_PASSWORD": f"db/{suffix}@pw",
            "AIRFLOW_ADMIN_USER": self.airflow_user,
            "AIRFLOW_ADMIN_PASSWORD": self.airflow_password,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._token: str | None = None

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(*COMPOSE, "--profile", "pipeline", *args, timeout=timeout, check=check)

    def exec(self, service: str, *command: str, timeout: float = 600) -> str:
        return self.compose("exec", "-T", service, *command, timeout=timeout).stdout

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--tail=60", *services, check=False).stdout

    def health(self, service: str, timeout: float = 300) -> str:
        """The container's healthcheck status once it reports healthy, or at the timeout."""
        container = self.compose("ps", "-q", service).stdout.strip()
        deadline = time.monotonic() + timeout
        while True:
            status = self.run("docker", "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            if status == "healthy" or time.monotonic() > deadline:
                return status
            time.sleep(3)

    def wait_ready(self, timeout: float = 900) -> None:
        """The API answers /readyz once the trainer has filled the empty store and reloaded it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(3)
        raise TimeoutError(f"api not ready after {timeout}s:\n{self.logs('api', 'trainer')}")

    def client(self, **kwargs):
        import bentoml

        return bentoml.SyncHTTPClient(self.url, **kwargs)

    # Airflow's REST API (v2), with a JWT from its login endpoint: what the UI itself uses.
    def login(self, username: str, password: str) -> httpx.Response:
        return httpx.post(f"{self.airflow}/auth/token", json={"username": username, "password": password}, timeout=30)

    def airflow_api(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._token is None:
            answer = self.login(self.airflow_user, self.airflow_password)
            assert answer.status_code in (200, 201), answer.text
            self._token = answer.json()["access_token"]
        headers = {"Authorization": f"Bearer {self._token}"}
        return httpx.request(method, f"{self.airflow}/api/v2{path}", headers=headers, timeout=60, **kwargs)

    def xcom(self, run_id: str, task: str):
        answer = self.airflow_api(
            "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries/return_value?deserialize=true"
        )
        assert answer.status_code == 200, answer.text
        value = answer.json()["value"]
        return json.loads(value) if isinstance(value, str) else value

    def task_log(self, run_id: str, task: str) -> str:
        answer = self.airflow_api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}/logs/1?full_content=true")
        return answer.text[-4000:]

    def remove(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        for image in self.images.values():
            # Untag only: the build layers stay as Docker's build cache (`docker image prune` removes them).
            self.run("docker", "image", "rm", "--force", "--no-prune", image, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[PipelineStack]:
    stack = PipelineStack(tmp_path_factory.mktemp("bento-home"))
    try:
        stack.run(str(DEPLOY), "build", timeout=1800)  # bentoml build -> containerize -> the jupyter image
        stack.compose("build", "mariadb", "airflow", timeout=1800)
        stack.compose("up", "-d")
        yield stack
    finally:
        stack.remove()


def served_tags(stack: PipelineStack) -> dict[str, str]:
    with stack.client(server_ready_timeout=0) as client:
        return {m["algorithm"]: m["tag"] for m in client.models()["models"]}


def test_the_profile_starts_every_service_healthy(stack):
    assert set(stack.compose("ps", "--services").stdout.split()) >= {"api", "trainer", "jupyter", "mariadb", "airflow"}
    stack.wait_ready()  # the trainer filled the empty store and reloaded the API
    assert stack.health("mariadb") == "healthy", stack.logs("mariadb")
    assert stack.health("airflow") == "healthy", stack.logs("airflow")
    assert stack.health("api") == "healthy", stack.logs("api")
    # Airflow writes the shared store as the api's user; its UI is published on loopback only, MariaDB not at all.
    assert stack.exec("airflow", "id", "-u").strip() == stack.exec("api", "id", "-u").strip() == "1034"
    assert stack.compose("port", "airflow", "8080").stdout.strip() == f"127.0.0.1:{stack.airflow_port}"
    assert stack.compose("port", "mariadb", "3306", check=False).stdout.strip() in ("", ":0")


def test_airflow_lists_the_dag_behind_its_login(stack):
    assert httpx.get(f"{stack.airflow}/api/v2/dags", timeout=30).status_code == 401
    assert stack.login(stack.airflow_user, "not-the-password").status_code == 401
    assert stack.login("admin", "admin").status_code == 401  # no default account
    page = httpx.get(f"{stack.airflow}/", timeout=30)
    assert page.status_code == 200 and "<title>Airflow</title>" in page.text

    # The DAG processor registers the file shortly after start: wait until the listing has it.
    deadline = time.monotonic() + 180
    while True:
        dags = {d["dag_id"]: d for d in stack.airflow_api("GET", "/dags").json()["dags"]}
        if DAG in dags or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert DAG in dags, f"Airflow lists {sorted(dags)}:\n{stack.logs('airflow')}"
    assert dags[DAG]["is_paused"] is False  # triggering from the UI runs it at once
    assert dags[DAG]["has_import_errors"] is False
    tasks = stack.airflow_api("GET", f"/dags/{DAG}/tasks").json()["tasks"]
    assert sorted(t["task_id"] for t in tasks) == sorted(TASKS)


def test_a_dag_run_trains_from_mariadb_and_the_api_serves_its_versions(stack):
    stack.wait_ready()
    before = served_tags(stack)
    assert sorted(before) == sorted(ALGORITHMS)

    trigger = {"logical_date": None, "conf": {"models": RETRAINED}}
    answer = stack.airflow_api("POST", f"/dags/{DAG}/dagRuns", json=trigger)
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["dag_run_id"]
    deadline = time.monotonic() + 900
    while True:
        state = stack.airflow_api("GET", f"/dags/{DAG}/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(3)
    if state != "success":
        logs = "\n".join(f"--- {task} ---\n{stack.task_log(run_id, task)}" for task in TASKS)
        pytest.fail(f"DAG run {run_id} ended {state}:\n{logs}\n{stack.logs('airflow')}")
    instances = stack.airflow_api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert {t["task_id"]: t["state"] for t in instances} == dict.fromkeys(TASKS, "success")

    # The tables are in MariaDB: the clean report counts the rows the train task then read.
    cleaned, trained, gated = (stack.xcom(run_id, task) for task in ("clean", "train", "gate"))
    count = stack.exec(
        "mariadb",
        "sh",
        "-c",
        'MYSQL_PWD="$MARIADB_PASSWORD" mariadb -h 127.0.0.1 -u "$MARIADB_USER" -N -e '
        '"SELECT COUNT(*) FROM penguins_clean" "$MARIADB_DATABASE"',
    )
    assert int(count) == cleaned["rows_out"] == trained["rows"] > 300

    # Retrained on the same penguins, the new versions score as well as the served ones: the gate promotes them and
    # the reload task makes the API serve them; the other algorithms keep their versions.
    assert sorted(gated["rejected"]) == []
    promoted = {tag.split(":")[0]: tag for tag in gated["promoted"]}
    assert set(promoted) == {model_name(a) for a in RETRAINED}
    reloaded = stack.xcom(run_id, "reload")  # the API's answer to the reload task: it loaded what the DAG saved
    assert reloaded["failed"] == [], reloaded["failed"]
    assert sorted(u["to"] for u in reloaded["updated"]) == sorted(promoted.values())
    after = served_tags(stack)
    for algorithm in ALGORITHMS:
        if algorithm in RETRAINED:
            assert after[algorithm] == promoted[model_name(algorithm)] != before[algorithm]
        else:
            assert after[algorithm] == before[algorithm]
    with stack.client() as client:
        for algorithm in RETRAINED:
            [prediction] = getattr(client, endpoint_name(algorithm))(penguins=[EXAMPLE_PENGUIN])
            assert prediction["species"] == "Gentoo" and prediction["model"] == after[algorithm]

    # The served versions say where their rows came from (password hidden) and which rows: the fingerprint of
    # MariaDB's clean table as it is now, read from the api container's view of the shared store.
    url = f"mysql+pymysql://penguins:{quote(stack.env['PENGUINS_DB_PASSWORD'], safe='')}@mariadb/penguins"
    fingerprint = stack.exec(
        "airflow",
        "python",
        "-c",
        "import sys; from penguins.data import fingerprint; from penguins.db import load_clean; "
        "print(fingerprint(load_clean(sys.argv[1])))",
        url,
    ).strip()
    assert fingerprint == trained["data_fingerprint"]
    for algorithm in RETRAINED:
        metadata = json.loads(
            stack.exec(
                "api",
                "python",
                "-c",
                "import bentoml, json, sys; print(json.dumps(bentoml.models.get(sys.argv[1]).info.metadata))",
                after[algorithm],
            )
        )
        assert metadata["data_source"] == "mysql+pymysql://penguins:***@mariadb/penguins#penguins_clean"
        assert metadata["data_fingerprint"] == fingerprint
        assert stack.env["PENGUINS_DB_PASSWORD"] not in json.dumps(metadata)
