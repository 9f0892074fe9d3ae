"""The compose `pipeline` profile, for real: the whole stack plus MariaDB and Airflow on fresh volumes; Airflow lists
the DAG behind its login; its UI (in headless Chromium) logs in and triggers a run; a run triggered through its REST
API ingests into MariaDB, cleans, trains from the clean table, gates and reloads the API, and the API then serves the
versions that run trained, whose metadata names the MariaDB table and the fingerprint of its rows.

Needs a Docker engine and compose (v2 `docker compose` or v1 `docker-compose`); skips with the reason otherwise
(`.ci/run` starts one with ../shared/docker/up). A unique compose project, unique image tags and free loopback
ports; everything is removed at the end (containers, volumes, the tagged images; their build layers stay in
Docker's cache so the next run builds fast).

    uv run pytest tests/test_container_pipeline.py
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import endpoint_name, model_name
from penguins.training import ALGORITHMS
from tests import browser
from tests.compose import COMPOSE, VARIANTS, WHY_NOT, Stack, require
from tests.harness import free_port
from tests.tiers import unavailable

pytestmark = [pytest.mark.container, pytest.mark.integration]

DAG = "penguins_retrain"
TASKS = ["ingest", "clean", "train", "gate", "reload"]
RETRAINED = ["logistic-regression", "knn"]  # what the triggered run trains (the run's `models` parameter)


if COMPOSE is None:
    unavailable(f"container tests need a Docker engine: {WHY_NOT}", module=True)


class PipelineStack(Stack):
    """The stack with the pipeline profile, and Airflow's REST API as the UI uses it."""

    def __init__(self, home: Path, compose: str | None = None):
        self.airflow_port = free_port()
        self.airflow = f"http://127.0.0.1:{self.airflow_port}"
        self.airflow_user, self.airflow_password = "penguin-admin", f"airflow-{uuid.uuid4().hex}"
        super().__init__(
            home,
            profiles=("pipeline",),
            images=("mariadb", "airflow"),
            compose=compose,
            AIRFLOW_PORT=str(self.airflow_port),
            # Not URL-safe on purpose: the airflow entry point percent-encodes it into the DAG's database URL.
            PENGUINS_DB_PASSWORD=f"db/{uuid.uuid4().hex[:8]}@pw",
            AIRFLOW_ADMIN_USER=self.airflow_user,
            AIRFLOW_ADMIN_PASSWORD=self.airflow_password,
        )
        self._token: str | None = None

    def wait_ready(self, timeout: float = 900) -> None:
        """The API answers /readyz once the trainer has filled the empty store and reloaded it."""
        self.wait_for("/readyz", timeout, "trainer")

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


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request, tmp_path_factory) -> Iterator[PipelineStack]:
    require(request.param)  # Compose v1 and v2: every test runs with each
    stack = PipelineStack(tmp_path_factory.mktemp("bento-home"), compose=request.param)
    try:
        stack.deploy("build")  # bentoml build -> containerize -> the jupyter image
        stack.compose("build", "mariadb", "airflow", timeout=1800)
        stack.compose("up", "-d")
        yield stack
    finally:
        stack.remove()


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


def run_ids(stack: PipelineStack) -> list[str]:
    return [run["dag_run_id"] for run in stack.airflow_api("GET", f"/dags/{DAG}/dagRuns").json()["dag_runs"]]


def wait_for_run(stack: PipelineStack, run_id: str, timeout: float = 900) -> str:
    """The run's final state (or its state at the timeout), with every task's log on anything but success."""
    deadline = time.monotonic() + timeout
    while True:
        state = stack.airflow_api("GET", f"/dags/{DAG}/dagRuns/{quote(run_id)}").json()["state"]
        if state in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(3)
    if state != "success":
        logs = "\n".join(f"--- {task} ---\n{stack.task_log(run_id, task)}" for task in TASKS)
        pytest.fail(f"DAG run {run_id} ended {state}:\n{logs}\n{stack.logs('airflow')}")
    return state


def test_the_ui_logs_in_lists_the_dag_and_triggers_a_run_the_api_then_serves(stack):
    if reason := browser.missing():
        unavailable(reason)
    stack.wait_ready()
    before = stack.served_tags()
    with browser.chromium() as chromium:
        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{stack.airflow}/dags")
        page.fill("input[name=username]", stack.airflow_user)  # redirected to Airflow's login page
        page.fill("input[name=password]", stack.airflow_password)
        page.click("button[type=submit]")
        page.get_by_role("link", name=DAG).wait_for()  # the DAG list shows it
        page.goto(f"{stack.airflow}/dags/{DAG}")

        # The Trigger button's form shows the DAG's parameters; train only knn in this run.
        earlier = set(run_ids(stack))
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_placeholder("Enter each string on a new line").fill("knn")
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        deadline = time.monotonic() + 60
        while not (started := set(run_ids(stack)) - earlier) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(started) == 1, f"the Trigger button started {sorted(started)}"
        [run_id] = started
        wait_for_run(stack, run_id)

        page.goto(f"{stack.airflow}/dags/{DAG}/runs/{quote(run_id)}")
        page.get_by_text("Success").first.wait_for()
        assert stack.airflow_user in page.locator("body").inner_text()  # the triggering user
        browser.ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(browser.ARTIFACTS / "airflow-run.png"), full_page=True)

    assert stack.airflow_api("GET", f"/dags/{DAG}/dagRuns/{quote(run_id)}").json()["conf"]["models"] == ["knn"]
    after = stack.served_tags()
    assert after["knn"] != before["knn"]  # the version this run trained is served
    assert {a: t for a, t in after.items() if a != "knn"} == {a: t for a, t in before.items() if a != "knn"}


def test_a_dag_run_trains_from_mariadb_and_the_api_serves_its_versions(stack):
    stack.wait_ready()
    before = stack.served_tags()
    assert sorted(before) == sorted(ALGORITHMS)

    trigger = {"logical_date": None, "conf": {"models": RETRAINED}}
    answer = stack.airflow_api("POST", f"/dags/{DAG}/dagRuns", json=trigger)
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["dag_run_id"]
    wait_for_run(stack, run_id)
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
    after = stack.served_tags()
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
