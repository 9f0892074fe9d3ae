"""The notebooks: stripped in git, built on the package's contract, and executed headless (nbclient) against a
scratch model store; the training notebook also against a real `bentoml serve` with an admin token."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from penguins.contract import FEATURES, ISLANDS, SEXES, SPECIES, TARGET
from tests.harness import serve

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01-explore.ipynb", "02-train.ipynb")


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(name: str, home: Path, timeout: int = 600, **env: str) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel whose BentoML home is `home`; raises on the first failing cell."""
    from nbclient import NotebookClient

    notebook = read(name)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINS_")}
    environment.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", **env)
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=environment)
    return notebook


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        json.dumps(output) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


@pytest.mark.parametrize("name", NAMES)
def test_stripped_in_git(name):
    notebook = read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.mark.parametrize("name", NAMES)
def test_spell_no_contract_names(name):
    """Feature, species, island and sex names come from penguins.contract, never from the notebook itself."""
    source = "\n".join(cell.source for cell in read(name).cells if cell.cell_type == "code")
    for word in (*FEATURES, *SPECIES, *ISLANDS, *SEXES, TARGET):
        assert f'"{word}"' not in source and f"'{word}'" not in source, f"{name} spells {word!r}"
    assert "from penguins" in source


@pytest.mark.notebooks
def test_explore_runs_headless(tmp_path):
    notebook = execute("01-explore.ipynb", tmp_path)
    assert outputs_text(notebook).count("image/png") >= 3


@pytest.mark.notebooks
def test_train_runs_headless_into_a_scratch_store(tmp_path):
    """Every built-in and the notebook's own classifier (extra-trees) saved through the promotion gate."""
    from bentoml._internal.models.model import Model

    from penguins.names import STATUS_LABEL
    from penguins.scan import scan
    from penguins.training import ALGORITHMS

    notebook = execute("02-train.ipynb", tmp_path)
    stored, failures = scan(tmp_path / "models")
    assert failures == []
    assert sorted(m.algorithm for m in stored) == sorted([*ALGORITHMS, "extra-trees"])
    for model in stored:
        info = Model.from_path(model.path).info
        assert info.labels[STATUS_LABEL] == "promoted" and info.metadata["gate"]["status"] == "promoted"
    own = Model.from_path(next(m.path for m in stored if m.algorithm == "extra-trees")).info.metadata
    assert own["estimator"] == "sklearn.ensemble.ExtraTreesClassifier"
    text = outputs_text(notebook)
    assert "Saved(tag='penguins-extra-trees:" in text
    assert text.count("image/png") >= 2  # the comparison and the confusion matrices
    assert "PENGUINS_API_URL is not set" in text


@pytest.mark.integration
def test_train_reloads_and_classifies_through_a_real_server(tmp_path):
    """Empty store, server not ready -> the notebook trains, reloads with the token and classifies (it asserts the
    answers come from the versions it just saved); then adds its own extra-trees, reloads, and calls it through a new
    client's classify_extra_trees, with no restart."""
    import bentoml

    token = "notebook-test-token"
    with serve(tmp_path, tmp_path / "server.log", PENGUINS_ADMIN_TOKEN=token) as url:
        notebook = execute(
            "02-train.ipynb",
            tmp_path,
            PENGUINS_API_URL=url,
            PENGUINS_ADMIN_TOKEN=token,
            PENGUINS_NOTEBOOK_MODELS="logistic-regression knn",
        )
        text = outputs_text(notebook)
        assert "serving:" in text and "routes added: ['/classify_extra_trees']" in text
        with bentoml.SyncHTTPClient(url) as client:
            served = {m["algorithm"]: m["tag"] for m in client.models()["models"]}
    assert set(served) == {"logistic-regression", "knn", "extra-trees"}
    assert f"'model': '{served['extra-trees']}'" in text  # the notebook's last answer came from its own model
