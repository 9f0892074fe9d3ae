"""The server's start-up line: the store it reads, how many models it serves, and when none the exact command that
trains one into that store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from penguins.errors import TRAIN_HINT
from penguins.scan import STORE_FAILURE, Failure, RejectedVersion, StoredModel, scan
from penguins.snapshot import Snapshot
from penguins.startup import startup_line, train_command
from tests.harness import serve


def test_an_empty_store_gets_the_command_with_its_bentoml_home(tmp_path):
    store = tmp_path / "my home" / "models"
    line = startup_line(store, Snapshot())
    assert f"model store {store}" in line and "serving no model" in line
    assert f"`BENTOML_HOME='{tmp_path / 'my home'}' uv run python train.py`" in line
    assert train_command(store) == f"BENTOML_HOME='{tmp_path / 'my home'}' uv run python train.py"


def test_a_store_with_models_says_how_many_and_which(store):
    line = startup_line(store, scan(store))
    assert line.startswith(f"serving 5 models from the model store {store}: penguins-gradient-boosting, ")
    assert "train.py" not in line
    one = StoredModel("penguins-knn", "penguins-knn:abc", "knn", store / "penguins-knn" / "abc")
    assert startup_line(store, [one]).startswith("serving 1 model from")


def test_what_is_held_but_not_served_is_named():
    rejected = RejectedVersion("penguins-svm", "penguins-svm:x", "svm", {}, "2026-01-01T00:00:00")
    broken = Failure(STORE_FAILURE, "cannot read the model store /s (PermissionError: denied)")
    line = startup_line(Path("/s/models"), Snapshot(rejected=(rejected,), failures=(broken,)))
    assert "held but not served: penguins-svm (GET /models says why)" in line
    assert "cannot read the model store /s (PermissionError: denied)" in line
    assert "BENTOML_HOME=/s uv run python train.py" in line


def test_the_503s_hint_is_the_projects_command():
    assert "uv run python train.py" in TRAIN_HINT and "BENTOML_HOME" in TRAIN_HINT


@pytest.mark.integration
def test_a_real_server_says_where_it_stands_in_every_worker(tmp_path, store_dir):
    empty, full = tmp_path / "empty", tmp_path / "full"
    shutil.copytree(store_dir, full / "models")
    with serve(empty, tmp_path / "empty.log", PENGUINS_WORKERS="2"):
        pass
    with serve(full, tmp_path / "full.log"):
        pass
    lines = [line for line in (tmp_path / "empty.log").read_text().splitlines() if "serving no model" in line]
    assert len(lines) == 2, lines  # one per worker
    assert all(f"BENTOML_HOME={empty} uv run python train.py" in line for line in lines)
    (line,) = [line for line in (tmp_path / "full.log").read_text().splitlines() if "serving 5 models" in line]
    assert f"model store {full / 'models'}" in line
