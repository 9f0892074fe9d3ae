"""The Airflow DAG, run for real with `airflow dags test` against SQLite and a temporary store, reloading a real
`bentoml serve` that requires the admin token. Needs the `airflow` extra (uv sync --extra airflow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from penguins.names import model_name
from penguins.scan import scan
from tests.harness import ROOT, run_train, serve
from tests.tiers import unavailable

pytestmark = pytest.mark.integration

TOKEN = "dag-test-token"


def _airflow() -> str:
    try:
        import airflow  # noqa: F401
    except ImportError:
        unavailable("Apache Airflow is not installed: uv sync --extra airflow")
    binary = Path(sys.executable).with_name("airflow")
    if not binary.exists():
        unavailable(f"no airflow command beside {sys.executable}")
    return str(binary)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """An Airflow home of our own: SQLite metadata database, this repo's dags/ folder, no examples."""
    binary = _airflow()
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    migrated = subprocess.run([binary, "db", "migrate"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return binary, env


def _dags_test(binary: str, env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [binary, "dags", "test", "penguins_retrain"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    output = done.stdout + "\n--- stderr ---\n" + done.stderr
    log.write_text(output)
    assert done.returncode == 0 and "state=success, run_type" in output, output[-6000:]
    return done


def test_the_dag_ingests_cleans_trains_gates_and_reloads_a_real_server(airflow_env, tmp_path):
    binary, env = airflow_env
    home = tmp_path / "home"
    database = tmp_path / "penguins.db"
    # The server starts with one model (logistic regression) and needs the token to reload.
    run_train(home, "--models", "logistic-regression")
    with serve(home, tmp_path / "serve.log", PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        assert httpx.post(f"{url}/reload").status_code == 401
        run_env = {
            **env,
            "BENTOML_HOME": str(home),
            "PENGUINS_DATABASE_URL": f"sqlite:///{database}",
            "PENGUINS_API_URL": url,
            "PENGUINS_ADMIN_TOKEN": TOKEN,
            "PENGUINS_MODELS": json.dumps(["logistic-regression", "knn"]),
        }
        _dags_test(binary, run_env, tmp_path / "dags-test.log")
        listing = httpx.post(f"{url}/models").json()
        served = {m["name"]: m for m in listing["models"]}
        # The reload reached the server: knn (new) is served, trained from the clean table's rows.
        assert set(served) == {model_name("logistic-regression"), model_name("knn")}
        assert served[model_name("knn")]["tag"] in {m.tag for m in scan(home / "models")[0]}
        assert not (home / "penguins-staging").exists() or not any((home / "penguins-staging").iterdir())

        assert listing["rejected"] == []
        first_tags = {name: m["tag"] for name, m in served.items()}

        # Second run: a CSV of the same penguins with shuffled species joins the raw table; models trained on the
        # contradicting rows score far lower on their hold-out part, so the gate rejects them and the server keeps
        # the versions it had, listing the rejected ones.
        from penguins.data import load_penguins

        noisy = load_penguins()
        noisy["species"] = noisy["species"].sample(frac=1, random_state=0).to_numpy()
        unchanged = int((noisy["species"] == load_penguins()["species"]).sum())  # duplicates of bundled rows
        noisy.to_csv(tmp_path / "shuffled.csv", index=False)
        _dags_test(binary, {**run_env, "PENGUINS_CSV": str(tmp_path / "shuffled.csv")}, tmp_path / "dags-test-2.log")
        listing = httpx.post(f"{url}/models").json()
        assert {m["name"]: m["tag"] for m in listing["models"]} == first_tags
        assert {r["name"] for r in listing["rejected"]} == set(first_tags)
        assert all(r["gate"]["status"] == "rejected" for r in listing["rejected"])
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM penguins_clean")).scalar_one() == 342 + 342 - unchanged
    engine.dispose()
    shutil.rmtree(home, ignore_errors=True)
