"""The peers mode's own logic (benchmarks/peers): what it sends each peer, how it reads their answers, how it checks
them against ours, and what it exports from the store. The peers themselves run only in `run.py --peers`."""

from __future__ import annotations

import json

import pytest

from benchmarks.peers.catalog import _mlserver_answers, _mlserver_body, export, feature_rows, peers
from benchmarks.peers.compare import _agreement
from penguins.contract import FEATURES, SPECIES
from penguins.names import model_name


def test_the_bulk_penguins_are_complete_rows_of_the_data_set(frame):
    rows = feature_rows(frame, 50)
    assert len(rows) == 50 and all(list(row) == list(FEATURES) for row in rows)
    assert all(row["sex"] in ("female", "male") and isinstance(row["body_mass_g"], float) for row in rows)


def test_mlserver_gets_one_typed_input_per_column_and_both_outputs(frame):
    rows = feature_rows(frame, 3)
    body = _mlserver_body(rows)
    assert body["parameters"] == {"content_type": "pd"}
    inputs = {i["name"]: i for i in body["inputs"]}
    assert set(inputs) == set(FEATURES) and all(i["shape"] == [3] for i in inputs.values())
    assert inputs["island"]["datatype"] == "BYTES" and inputs["bill_length_mm"]["datatype"] == "FP64"
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]
    answer = {
        "outputs": [
            {"name": "predict", "data": ["Adelie", "Gentoo"]},
            {"name": "predict_proba", "shape": [2, 3], "data": [0.9, 0.1, 0.0, 0.0, 0.2, 0.8]},
        ]
    }
    assert _mlserver_answers(answer) == [("Adelie", [0.9, 0.1, 0.0]), ("Gentoo", [0.0, 0.2, 0.8])]


def test_the_other_peers_answers_are_read_in_class_order():
    classes = list(SPECIES)
    row = {"species": "Gentoo", "probabilities": {"Gentoo": 0.7, "Adelie": 0.2, "Chinstrap": 0.1}}
    for peer in peers(classes):
        if peer.name == "mlserver":
            continue
        payload = {"predictions": [row]} if peer.name == "kserve" else [row]
        assert peer.answers(payload) == [("Gentoo", [0.2, 0.1, 0.7])], peer.name


def test_an_answer_that_differs_from_ours_stops_the_benchmark():
    ours = [("Adelie", [0.9, 0.1, 0.0]), ("Gentoo", [0.0, 0.0, 1.0])]
    assert _agreement("peer", ours, ours, 0.1)["species_differing"] == 0
    with pytest.raises(RuntimeError, match="species differ"):
        _agreement("peer", [("Adelie", [0.9, 0.1, 0.0]), ("Adelie", [0.0, 0.0, 1.0])], ours, 0.1)
    with pytest.raises(RuntimeError, match="probabilities"):
        _agreement("peer", [("Adelie", [0.7, 0.3, 0.0]), ours[1]], ours, 0.1)
    with pytest.raises(RuntimeError, match="answered 1"):
        _agreement("peer", ours[:1], ours, 0.1)


def test_the_peers_serve_the_files_of_the_stored_model(tmp_path, store_dir, trained):
    classes = export(store_dir.parent, model_name("random-forest"), tmp_path)
    assert classes == list(SPECIES) == json.loads((tmp_path / "classes.json").read_text())
    (stored,) = [p for p in store_dir.glob(f"{model_name('random-forest')}/*/saved_model.pkl")]
    assert (tmp_path / "pipeline.joblib").read_bytes() == stored.read_bytes()
    assert (tmp_path / "model.onnx").stat().st_size > 1000
