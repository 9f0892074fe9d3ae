"""Unit tests of data and training on a small frame, and behaviour tests of the fully trained models."""

import json

import numpy as np
import pandas as pd
import pytest

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, SPECIES, TARGET, Penguin
from penguins.data import fingerprint, prepare
from penguins.predict import OnnxPredictor, SklearnPredictor, columns_from_frame, columns_of
from penguins.training import ALGORITHMS, build_pipeline, train

FIVE = {"logistic-regression", "random-forest", "gradient-boosting", "svm", "knn"}


def test_prepare_keeps_contract_columns_and_plain_missing_values():
    raw = pd.DataFrame(
        {
            "species": ["Adelie", None, "Gentoo"],
            "island": ["Dream", "Biscoe", "Biscoe"],
            "bill_length_mm": [39.0, 40.0, None],
            "bill_depth_mm": [18.0, 17.0, None],
            "flipper_length_mm": [190.0, 180.0, None],
            "body_mass_g": [3500.0, 3600.0, None],
            "sex": pd.array([None, "male", "female"], dtype="string"),
            "year": [2007, 2008, 2009],
        }
    )
    prepared = prepare(raw)
    assert list(prepared.columns) == [*FEATURES, TARGET]
    assert len(prepared) == 1  # no label; no measurement at all
    assert prepared["sex"].dtype == object and pd.isna(prepared.loc[0, "sex"])


def test_fingerprint_follows_content(small_frame):
    assert fingerprint(small_frame) == fingerprint(small_frame.copy())
    changed = small_frame.copy()
    changed.loc[0, "body_mass_g"] += 1
    assert fingerprint(changed) != fingerprint(small_frame)


def test_five_algorithms_are_offered():
    assert set(ALGORITHMS) >= FIVE


@pytest.mark.parametrize("algorithm", sorted(FIVE))
def test_every_pipeline_fits_raw_rows_with_missing_values(small_frame, algorithm):
    pipeline = build_pipeline(ALGORITHMS[algorithm](0)).fit(small_frame[list(FEATURES)], small_frame[TARGET])
    rows = small_frame[list(FEATURES)].head(3).copy()
    rows.loc[0, "sex"] = np.nan
    rows.loc[1, "bill_length_mm"] = np.nan
    assert set(pipeline.predict(rows)) <= set(SPECIES)
    assert list(pipeline.classes_) == list(SPECIES)  # labels travel with the model


def test_training_is_deterministic_and_records_provenance(small_frame):
    first = train("random-forest", small_frame, seed=3, compile=False)
    second = train("random-forest", small_frame, seed=3, compile=False)
    assert first.metrics == second.metrics
    x = small_frame[list(FEATURES)]
    assert np.array_equal(first.pipeline.predict_proba(x), second.pipeline.predict_proba(x))
    p = first.provenance
    assert p["seed"] == 3 and p["classes"] == list(SPECIES) and p["data_fingerprint"] == fingerprint(small_frame)
    assert p["train_rows"] + p["test_rows"] == p["data_rows"] == len(small_frame)
    assert {"scikit-learn", "bentoml", "python"} <= set(p["library_versions"])
    assert json.loads(p["feature_schema"]) == Penguin.model_json_schema()
    m = first.metrics
    assert {"cv_accuracy_mean", "cv_accuracy_std", "test_accuracy", "macro_f1", "confusion_matrix"} <= set(m)
    assert np.array(m["confusion_matrix"]).sum() == p["test_rows"]


def test_unknown_algorithm_is_refused(small_frame):
    with pytest.raises(KeyError, match="choose from"):
        train("deep-forest", small_frame)


# --- behaviour of the fully trained models (the session store) -------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(FIVE))
def test_accuracy_floor(trained, algorithm):
    model, _ = trained[algorithm]
    assert model.metrics["test_accuracy"] >= 0.95
    assert model.metrics["cv_accuracy_mean"] >= 0.95


@pytest.mark.parametrize("algorithm", sorted(FIVE))
def test_compiled_form_gives_the_pipelines_labels_on_the_whole_dataset(trained, frame, algorithm):
    model, _ = trained[algorithm]
    assert model.onnx is not None, model.compiled
    columns = columns_from_frame(frame)
    sk_labels, sk_proba = SklearnPredictor(model.pipeline).predict(columns)
    onnx_labels, onnx_proba = OnnxPredictor(model.onnx, model.pipeline.classes_).predict(columns)
    assert list(onnx_labels) == list(sk_labels)
    assert np.abs(onnx_proba - sk_proba).max() <= 0.1
    assert np.allclose(onnx_proba.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("algorithm", sorted(FIVE))
def test_every_species_is_reachable(trained, frame, algorithm):
    model, _ = trained[algorithm]
    assert set(model.pipeline.predict(frame[list(FEATURES)])) == set(SPECIES)


def test_prediction_does_not_depend_on_field_order(trained, frame):
    model, _ = trained["logistic-regression"]
    rows = frame.head(20)
    penguins = [
        Penguin(**{k: (None if pd.isna(v) else v) for k, v in r.items() if k in FEATURES})
        for r in rows.to_dict("records")
    ]
    reordered = [Penguin.model_validate(dict(reversed(list(p.model_dump().items())))) for p in penguins]
    predictor = SklearnPredictor(model.pipeline)
    a, pa = predictor.predict(columns_of(penguins))
    b, pb = predictor.predict(columns_of(reordered))
    shuffled = rows[list(reversed(FEATURES))]
    assert list(a) == list(b) == list(model.pipeline.predict(shuffled))
    assert np.array_equal(pa, pb)


def test_missing_categories_are_imputed_the_same_way_by_both_predictors(trained, frame):
    model, _ = trained["svm"]
    rows = frame.head(30).copy()
    for feature in CATEGORICAL_FEATURES:
        rows[feature] = np.nan if feature == "sex" else rows[feature]
    columns = columns_from_frame(rows)
    assert list(SklearnPredictor(model.pipeline).predict(columns)[0]) == list(
        OnnxPredictor(model.onnx, model.pipeline.classes_).predict(columns)[0]
    )
