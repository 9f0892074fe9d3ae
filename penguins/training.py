"""Training: complete sklearn Pipelines on raw penguin rows, evaluated honestly and saved with provenance."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, TARGET, Penguin
from penguins.data import fingerprint
from penguins.explain import CUSTOM_OBJECT as EXPLAIN_OBJECT
from penguins.explain import build as build_explanation
from penguins.predict import check_compiled, compile_onnx
from penguins.store import labels_for, model_name

DEFAULT_SEED = 42
TEST_SIZE = 0.2
CV_FOLDS = 5

# Algorithm name -> estimator factory taking the seed. The name becomes the model name (penguins-<name>) and the
# per-model endpoint (classify_<name>).
ALGORITHMS: dict[str, Callable[[int], ClassifierMixin]] = {
    "logistic-regression": lambda seed: LogisticRegression(max_iter=2000, random_state=seed),
    "random-forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1),
    "gradient-boosting": lambda seed: GradientBoostingClassifier(random_state=seed),
    # SVC(probability=True) is deprecated in scikit-learn 1.9: calibrate the SVC explicitly instead.
    "svm": lambda seed: CalibratedClassifierCV(SVC(random_state=seed), ensemble=False),
    "knn": lambda seed: KNeighborsClassifier(n_neighbors=5),
}


def build_pipeline(estimator: ClassifierMixin) -> Pipeline:
    """Impute, scale and one-hot inside the pipeline, so the saved model takes raw rows like the API's."""
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                list(NUMERIC_FEATURES),
            ),
            (
                "categorical",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                list(CATEGORICAL_FEATURES),
            ),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("classifier", estimator)])


@dataclass
class TrainedModel:
    algorithm: str
    pipeline: Pipeline
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    onnx: bytes | None = None
    compiled: dict[str, Any] = field(default_factory=dict)
    # What explanations need (training rows, their preprocessed form, the PCA map, importances): see explain.py.
    explanation: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return model_name(self.algorithm)


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified hold-out split: the test part is never seen by fitting or cross-validation."""
    return train_test_split(frame, test_size=TEST_SIZE, stratify=frame[TARGET], random_state=seed)


def train(algorithm: str, frame: pd.DataFrame, seed: int = DEFAULT_SEED, compile: bool = True) -> TrainedModel:
    """Cross-validate on the training part, fit on it, score on the held-out part, and compile to ONNX."""
    if algorithm not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    train_part, test_part = split(frame, seed)
    x_train, y_train = train_part[list(FEATURES)], train_part[TARGET]
    x_test, y_test = test_part[list(FEATURES)], test_part[TARGET]

    pipeline = build_pipeline(ALGORITHMS[algorithm](seed))
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    cv_scores = cross_val_score(pipeline, x_train, y_train, cv=folds, scoring="accuracy")
    pipeline.fit(x_train, y_train)
    predicted = pipeline.predict(x_test)
    classes = [str(c) for c in pipeline.classes_]

    metrics = {
        "cv_accuracy_mean": float(np.mean(cv_scores)),
        "cv_accuracy_std": float(np.std(cv_scores)),
        "cv_folds": CV_FOLDS,
        "test_accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
        "confusion_matrix": confusion_matrix(y_test, predicted, labels=classes).tolist(),
    }
    provenance = {
        "classes": classes,
        # JSON text: BentoML metadata takes no None, and the schema has `"default": null`.
        "feature_schema": json.dumps(Penguin.model_json_schema()),
        "features": {"categorical": list(CATEGORICAL_FEATURES), "numeric": list(NUMERIC_FEATURES)},
        "data_fingerprint": fingerprint(frame),
        "data_rows": len(frame),
        "train_rows": len(train_part),
        "test_rows": len(test_part),
        "seed": seed,
        "library_versions": library_versions(),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    trained = TrainedModel(algorithm, pipeline, metrics, provenance)
    trained.explanation = build_explanation(pipeline, x_train, y_train, x_test, y_test, seed)
    if compile:
        try:
            trained.onnx = compile_onnx(pipeline)
            trained.compiled = {"format": "onnx", **check_compiled(pipeline, trained.onnx, frame)}
        except Exception as error:  # any conversion failure: the sklearn pipeline serves instead
            trained.onnx = None
            trained.compiled = {"format": "none", "reason": f"{type(error).__name__}: {error}"}
    return trained


def save(trained: TrainedModel, labels: dict[str, str] | None = None) -> str:
    """Save into the BentoML model store (BENTOML_HOME) and publish to the model repository when one is set
    (PENGUINS_MODEL_REPOSITORY); return the new tag. `labels` add to the project's own (the promotion gate's
    `status`)."""
    import bentoml

    from penguins import repository

    metadata = {
        **trained.metrics,
        **trained.provenance,
        "algorithm": trained.algorithm,
        "compiled": trained.compiled,
    }
    custom_objects: dict[str, Any] = {}
    if trained.onnx is not None:
        custom_objects["onnx"] = trained.onnx
    if trained.explanation is not None:
        custom_objects[EXPLAIN_OBJECT] = trained.explanation
    with _stock_pickle():
        saved = bentoml.sklearn.save_model(
            trained.name,
            trained.pipeline,
            labels={**labels_for(trained.algorithm), **(labels or {})},
            metadata=metadata,
            custom_objects=custom_objects or None,
        )
    repository.publish(str(saved.tag))  # every saved version, promoted or rejected: replicas elsewhere need both
    return str(saved.tag)


@contextmanager
def _stock_pickle() -> Iterator[None]:
    """Pickle without dill's reducers while saving. Importing dill (Airflow does, in the DAG's task processes) adds
    them to the pure-Python pickler's dispatch table, which joblib (hence bentoml.sklearn) copies into its own
    pickler when imported: the saved pipeline would then need dill to load (`dill._dill._load_type` for its slices),
    and the API's image has no dill. Every such table gets the stock reducers back for the save, then is restored."""
    if "dill" not in sys.modules:
        yield
        return
    import pickle

    from dill import _dill

    stock = getattr(_dill, "pickle_dispatch_copy", {})  # pickle's own table, copied by dill before extending it
    tables, pending = {}, [pickle._Pickler]
    while pending:
        cls = pending.pop()
        tables[id(cls.dispatch)] = cls.dispatch
        pending.extend(cls.__subclasses__())
    saved = [(table, dict(table)) for table in tables.values()]
    for table in tables.values():
        for key, reducer in list(table.items()):
            if str(getattr(reducer, "__module__", "")).startswith("dill"):
                if key in stock:
                    table[key] = stock[key]
                else:
                    del table[key]
    try:
        yield
    finally:
        for table, before in saved:
            table.clear()
            table.update(before)


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("bentoml", "scikit-learn", "numpy", "pandas", "skl2onnx", "onnxruntime")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}
