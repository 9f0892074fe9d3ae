"""The `penguins` command (pyproject's console script), run as a user runs it, `uv run penguins ...`, in its own
process, over a copy of the session store with versions added the way tests/test_gate.py adds them (no training)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from penguins.names import REJECTED, STATUS_LABEL, model_name
from penguins.scan import scan
from tests.harness import ROOT
from tests.test_gate import add_version
from tests.test_store import _save_past_the_gate
from tests.tiers import unavailable

pytestmark = pytest.mark.cli

GATE_REASON = "test_accuracy 0.9000 is worse than the served 1.0000 by more than 0.01"
NOT_ONNX = "MissingShapeCalculator: Unable to find a shape calculator for type 'MyForest'"


def penguins(
    home: Path | None, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    if shutil.which("uv") is None:
        unavailable("the `penguins` command is run with uv, which is not on PATH")
    environment = {k: v for k, v in os.environ.items() if k != "PENGUINS_MODEL_REPOSITORY"}
    if home is not None:
        environment["BENTOML_HOME"] = str(home)
    done = subprocess.run(
        ["uv", "run", "penguins", *args],
        cwd=ROOT,
        env={**environment, **(env or {}), "BENTOML_DO_NOT_TRACK": "true", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _edit(store: Path, tag: str, change) -> None:
    name, version = tag.split(":")
    path = store / name / version / "model.yaml"
    info = yaml.safe_load(path.read_text())
    change(info)
    path.write_text(yaml.safe_dump(info))


def _latest_tag(store: Path, algorithm: str) -> str:
    name = model_name(algorithm)
    return f"{name}:{(store / name / 'latest').read_text().strip()}"


def _gate_reason(info: dict) -> None:
    info["metadata"]["gate"] = {**info["metadata"].get("gate", {}), "status": REJECTED, "reason": GATE_REASON}


def _no_onnx(info: dict) -> None:
    info["metadata"]["compiled"] = {"format": "none", "reason": NOT_ONNX}


def test_models_lists_every_version_with_its_status_reason_and_predictor(store):
    served_svm = _latest_tag(store, "svm")
    rejected = add_version(store, "svm", "rejectedsvm", status=REJECTED, test_accuracy=0.9)
    _edit(store, rejected, _gate_reason)
    older = add_version(store, "knn", "olderknn", minutes=-60, make_latest=False)
    sklearn_only = _latest_tag(store, "random-forest")
    _edit(store, sklearn_only, _no_onnx)
    _save_past_the_gate(store)

    listed = {v["tag"]: v for v in json.loads(penguins(store.parent, "models", "--json").stdout)}
    assert listed[served_svm]["status"] == "served"
    assert listed[rejected]["status"] == "rejected" and listed[rejected]["why"] == GATE_REASON
    assert listed[rejected]["latest"] and not listed[served_svm]["latest"]
    assert listed[older]["status"] == "not served"
    assert listed[older]["why"] == f"{_latest_tag(store, 'knn')} is served"
    assert listed[sklearn_only]["predictor"] == "sklearn" and listed[sklearn_only]["not_onnx"] == NOT_ONNX
    assert listed[served_svm]["predictor"] == "onnx" and listed[served_svm]["not_onnx"] == ""
    (skipped,) = [v for v in listed.values() if v["status"] == "skipped"]
    assert skipped["name"] == model_name("decision-tree")
    assert "saved without this project's labels" in skipped["why"] and "train_and_save" in skipped["why"]

    table = penguins(store.parent, "models").stdout
    for text in ("served (latest)", "rejected (latest)", GATE_REASON, NOT_ONNX, "skipped", "not served", older):
        assert text in table, text


def test_models_on_an_empty_store_says_how_to_train_one(tmp_path):
    done = penguins(tmp_path / "empty", "models")
    assert f"BENTOML_HOME={tmp_path / 'empty'} uv run python train.py" in " ".join(done.stdout.split())


def test_prune_is_a_dry_run_until_yes_and_never_deletes_the_served_version(store):
    served = {m.name: m.tag for m in scan(store)[0]}
    old = [add_version(store, "knn", f"old{i}", minutes=-10 * i, make_latest=False) for i in (1, 2, 3)]
    # A rejected newest version of svm: BentoML's latest, while the older one serves.
    rejected = add_version(store, "svm", "rejectedsvm", status=REJECTED, test_accuracy=0.5)
    before = sorted(p.name for p in (store / model_name("knn")).iterdir())

    dry = penguins(store.parent, "prune", "--keep", "2")
    assert "dry run: nothing deleted; run again with --yes to delete these 2 versions" in dry.stdout
    assert sorted(p.name for p in (store / model_name("knn")).iterdir()) == before
    rows = {line.split("│")[2].strip(): line for line in dry.stdout.splitlines() if line.count("│") > 4}
    assert "would delete" in rows[old[1]] and "would delete" in rows[old[2]] and "keep" in rows[old[0]]
    assert "served: never pruned" in rows[served[model_name("svm")]]

    done = penguins(store.parent, "prune", "--keep", "2", "--yes")
    assert f"deleted {old[1]} from the store" in done.stdout and f"deleted {old[2]} from the store" in done.stdout
    versions = {p.name for p in (store / model_name("knn")).iterdir() if p.is_dir()}
    assert versions == {served[model_name("knn")].split(":")[1], "old1"}
    assert {m.name: m.tag for m in scan(store)[0]} == served  # the same versions served

    # --keep 0 keeps only what is served and BentoML's latest (svm's rejected one), and the store still scans clean.
    penguins(store.parent, "prune", "--keep", "0", "--yes")
    assert {m.name: m.tag for m in scan(store)[0]} == served and scan(store)[1] == []
    svm = {p.name for p in (store / model_name("svm")).iterdir() if p.is_dir()}
    assert svm == {served[model_name("svm")].split(":")[1], rejected.split(":")[1]}
    assert {p.name for p in (store / model_name("knn")).iterdir() if p.is_dir()} == {
        served[model_name("knn")].split(":")[1]
    }
    assert penguins(store.parent, "prune", "--keep", "0").stdout.rstrip().endswith("nothing to prune")


def test_every_subcommand_has_help_and_what_hid_behind_python_m_is_dispatched(tmp_path):
    top = penguins(None, "--help").stdout
    for command in ("models", "prune", "repository", "db", "pipeline", "bootstrap"):
        assert command in top
        assert "usage:" in penguins(None, command, "--help").stdout, command
    assert "--keep N" in penguins(None, "prune", "--help").stdout
    # The repository's command line (`python -m penguins.cli repository` where the command is not installed).
    unset = penguins(tmp_path, "repository", "status", check=False)
    assert unset.returncode == 2 and "PENGUINS_MODEL_REPOSITORY is not set" in unset.stderr
    # The database's: ingest the bundled rows into a SQLite file.
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert json.loads(penguins(tmp_path, "db", "ingest", "--url", url).stdout)["rows_written"] > 300
    lone_gate = penguins(tmp_path, "pipeline", "gate", check=False)
    assert lone_gate.returncode == 2 and "gate takes the report of a train step" in lone_gate.stderr
    assert STATUS_LABEL  # the label whose value `models` shows as the status


def test_the_pipeline_runs_the_dags_steps_and_exits_3_on_a_rejection(store, tmp_path):
    """random-forest seed 7 scores 0.971 held out against the served seed-42 version's 1.0: rejected."""
    served = {m.name: m.tag for m in scan(store)[0]}
    settings = {
        "PENGUINS_DATABASE_URL": f"sqlite:///{tmp_path / 'pipeline.db'}",
        "PENGUINS_MODELS": '["random-forest"]',
        "PENGUINS_SEED": "7",
        "PENGUINS_API_URL": "",
    }
    done = penguins(store.parent, "pipeline", check=False, env=settings)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "rejected by the promotion gate, saved but not served: penguins-random-forest:" in done.stderr
    steps, text, decoder = [], done.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON report per step
        report, end = decoder.raw_decode(text)
        steps += list(report)
        text = text[end:].strip()
    assert steps == ["ingest", "clean", "train", "gate", "reload"]
    assert {m.name: m.tag for m in scan(store)[0]} == served
