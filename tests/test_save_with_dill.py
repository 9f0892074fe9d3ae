"""A model saved in a process that imported dill (Airflow's task processes do) would need dill to load, and the API
image has none: importing dill adds its reducers to the pure-Python pickler joblib saves with. So `saving.save`
refuses to save there, and the DAG's gate step (`pipeline.gate`) saves from a fresh interpreter. Each side runs in
its own interpreter: importing dill here would change pickling for every later test of the session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tiers import unavailable

ROOT = Path(__file__).resolve().parents[1]

REFUSED = textwrap.dedent(
    """
    import dill  # what an Airflow task process has imported before it saves
    from penguins.data import load_penguins
    from penguins.training import ALGORITHMS, train_and_save

    try:
        train_and_save(ALGORITHMS["knn"](42), "knn", frame=load_penguins())
    except RuntimeError as error:
        print("refused:", error)
    """
)

GATED = textwrap.dedent(
    """
    import pickle, sys
    import dill  # as in the DAG's gate task
    from joblib.numpy_pickle import NumpyPickler
    from penguins import pipeline
    from penguins.data import load_penguins
    from penguins.training import train

    assert NumpyPickler.dispatch[slice].__module__ == "dill._dill"  # what made the saved pipelines need dill
    staging = sys.argv[1]
    with open(f"{staging}/knn.pkl", "wb") as out:
        pickle.dump(train("knn", load_penguins(), 42), out)
    report = pipeline.gate({"staging": staging, "candidates": [{"algorithm": "knn", "path": f"{staging}/knn.pkl"}]})
    print(report["promoted"][0])
    """
)

LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["dill"] = None  # as in the API image: dill cannot be imported
    import bentoml
    from penguins.contract import EXAMPLE_PENGUIN
    import pandas as pd

    pipeline = bentoml.sklearn.load_model(sys.argv[1])
    print(pipeline.predict(pd.DataFrame([EXAMPLE_PENGUIN]))[0])
    """
)


@pytest.fixture
def python(tmp_path):
    # Found, never imported: dill imported here would change pickling for every later test of this process (the
    # session's store is saved through saving.save, which then refuses, rightly).
    if importlib.util.find_spec("dill") is None:
        unavailable("dill comes with the airflow extra (uv sync --extra airflow)")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def run(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    return run


@pytest.mark.cli
def test_a_save_where_dill_is_imported_is_refused_and_saves_nothing(python, tmp_path):
    out = python(REFUSED)
    assert out.startswith("refused: dill is imported in this process") and "penguins.pipeline.gate" in out
    assert not list((tmp_path / "models").glob("*/*/saved_model.pkl"))


@pytest.mark.cli
def test_the_dags_gate_step_saves_where_dill_is_imported_a_model_that_loads_without_dill(python, tmp_path):
    staging = tmp_path / "penguins-staging" / "run-1"
    staging.mkdir(parents=True)
    tag = python(GATED, str(staging))
    name, version = tag.split(":")
    assert b"dill" not in (tmp_path / "models" / name / version / "saved_model.pkl").read_bytes()
    assert python(LOAD, tag) == "Gentoo"
    assert not staging.exists()  # the gate removed the candidates it saved
