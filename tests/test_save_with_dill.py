"""A model saved in a process that imported dill (Airflow's task processes do) must load where dill is absent (the
API image). Importing dill adds its reducers to the pure-Python pickler joblib saves with; `training._save` sets them
aside while saving (every save goes through it). Each side runs in its own interpreter: importing dill here would
change pickling for every later test of the session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tiers import require_import

ROOT = Path(__file__).resolve().parents[1]

SAVE = textwrap.dedent(
    """
    import pickle
    import dill  # what an Airflow task process has imported before the DAG's gate task saves
    from joblib.numpy_pickle import NumpyPickler
    from penguins.data import load_penguins
    from penguins.training import ALGORITHMS, train_and_save

    extended = dict(pickle._Pickler.dispatch), dict(NumpyPickler.dispatch)
    assert extended[1][slice].__module__ == "dill._dill"  # what made the saved pipelines need dill
    print(train_and_save(ALGORITHMS["knn"](42), "knn", frame=load_penguins()).tag)
    assert (pickle._Pickler.dispatch, NumpyPickler.dispatch) == extended, "dill's reducers are back after saving"
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


@pytest.mark.cli
def test_a_model_saved_where_dill_is_imported_loads_without_dill(tmp_path):
    require_import("dill", "dill comes with the airflow extra (uv sync --extra airflow)")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def python(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    tag = python(SAVE)
    name, version = tag.split(":")
    assert b"dill" not in (tmp_path / "models" / name / version / "saved_model.pkl").read_bytes()
    assert python(LOAD, tag) == "Gentoo"
