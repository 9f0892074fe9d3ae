"""Training: one way for every classifier, the five built-ins and a user's own.

A classifier (an unfitted scikit-learn classifier, wrapped in the contract's preprocessing, or a complete `Pipeline`
over the contract's columns) is evaluated on a stratified hold-out split and cross-validation, given its explanation
data, compiled to ONNX when possible, passed through the promotion gate and saved as `penguins-<name>` with its
metrics and provenance (its estimator's import path and parameters among them):

    train_and_save(ExtraTreesClassifier(n_estimators=300), "extra-trees")            # Python, notebooks
    python train.py --estimator sklearn.ensemble.ExtraTreesClassifier --name extra-trees --param n_estimators=300

The built-ins are `Estimator`s too (import path + parameters), the form `train.py --estimator` takes. A classifier
that cannot be served raises `EstimatorError` before anything is saved.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, TARGET, Penguin
from penguins.data import BUNDLED_SOURCE, fingerprint, load_penguins
from penguins.explain import build as build_explanation
from penguins.gate import DEFAULT_TOLERANCE, Decision, save_gated
from penguins.names import check_model_name
from penguins.predict import check_compiled, compile_onnx
from penguins.saving import TrainedModel

DEFAULT_SEED = 42
TEST_SIZE = 0.2
CV_FOLDS = 5


class EstimatorError(ValueError):
    """A classifier that cannot be trained or served as a penguin model; raised before anything is saved."""


@dataclass(frozen=True)
class Estimator:
    """A classifier by import path and constructor parameters, as `train.py --estimator/--param` names one.

    A parameter that is itself an estimator is written `{"estimator": <import path>, "params": {...}}`.
    """

    path: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, seed: int) -> BaseEstimator:
        """An unfitted instance, seeded (see `seeded`), checked to be servable; raises EstimatorError saying why not."""
        estimator = self.construct(seed)
        check_classifier(estimator)
        return estimator

    def construct(self, seed: int) -> BaseEstimator:
        """The instance, unchecked: also how a parameter that is an estimator (SVC inside calibration) is made."""
        cls = import_class(self.path)
        valid = parameter_names(cls)
        for key in self.params:
            if key not in valid:
                raise EstimatorError(
                    f"{self.path} has no parameter {key!r}{_did_you_mean(key, valid)}; "
                    f"its parameters: {', '.join(valid) or 'none'}"
                )
        values = {key: _nested(value, seed) for key, value in self.params.items()}
        try:
            estimator = cls(**values)
        except Exception as error:
            raise EstimatorError(f"{self.path}({_arguments(self.params)}) failed: {_one_line(error)}") from None
        return seeded(estimator, seed)


def _nested(value: Any, seed: int) -> Any:
    if isinstance(value, Mapping) and "estimator" in value and set(value) <= {"estimator", "params"}:
        return Estimator(value["estimator"], value.get("params") or {}).construct(seed)
    return value


# The built-in algorithms. The name becomes the model name (penguins-<name>) and its endpoint (classify_<name>).
ALGORITHMS: dict[str, Estimator] = {
    "logistic-regression": Estimator("sklearn.linear_model.LogisticRegression", {"max_iter": 2000}),
    "random-forest": Estimator("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 100, "n_jobs": 1}),
    "gradient-boosting": Estimator("sklearn.ensemble.GradientBoostingClassifier"),
    # SVC(probability=True) is deprecated in scikit-learn 1.9: calibrate the SVC explicitly instead.
    "svm": Estimator(
        "sklearn.calibration.CalibratedClassifierCV", {"estimator": {"estimator": "sklearn.svm.SVC"}, "ensemble": False}
    ),
    "knn": Estimator("sklearn.neighbors.KNeighborsClassifier", {"n_neighbors": 5}),
}


def import_class(path: str) -> type:
    """The class at a dotted import path (`sklearn.ensemble.ExtraTreesClassifier`), or EstimatorError."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise EstimatorError(f"{path!r} is not a dotted import path (e.g. sklearn.ensemble.ExtraTreesClassifier)")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise EstimatorError(f"cannot import {path}: {_one_line(error)}") from None
    found = getattr(module, attribute, None)
    if found is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        hint = _did_you_mean(attribute, public)
        raise EstimatorError(f"cannot import {path}: {module_name} has no {attribute!r}{hint}")
    if not isinstance(found, type) or not issubclass(found, BaseEstimator):
        raise EstimatorError(f"{path} is not a scikit-learn estimator class (a subclass of sklearn.base.BaseEstimator)")
    return found


def parameter_names(cls: type) -> list[str]:
    """The constructor's named parameters: what scikit-learn's get_params() reports."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds]


def import_path(cls: type) -> str:
    """The shortest import path that gives the class: `sklearn.ensemble.ExtraTreesClassifier`, not `..._forest...`."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts)):
        candidate = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(candidate), cls.__qualname__, None) is cls:
                return f"{candidate}.{cls.__qualname__}"
        except Exception:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(estimator: BaseEstimator) -> dict[str, Any]:
    """The estimator as `Estimator` spells it: import path, and the parameters that differ from the defaults."""
    defaults = {p.name: p.default for p in inspect.signature(type(estimator)).parameters.values()}
    params: dict[str, Any] = {}
    for key, value in estimator.get_params(deep=False).items():
        if key in defaults and not _differs(value, defaults[key]):
            continue
        params[key] = describe(value) if isinstance(value, BaseEstimator) else _plain(value)
    return {"estimator": import_path(type(estimator)), "params": params}


def check_classifier(classifier: Any) -> None:
    """Raise EstimatorError unless `classifier` (an estimator or a Pipeline) can be served: a scikit-learn
    classifier with predict_proba, made of classes the API can import."""
    if not isinstance(classifier, BaseEstimator):
        raise EstimatorError(
            f"{type(classifier).__name__} is not a scikit-learn estimator (a subclass of sklearn.base.BaseEstimator)"
        )
    final = classifier.steps[-1][1] if isinstance(classifier, Pipeline) and classifier.steps else classifier
    what = import_path(type(final)) + (" (the pipeline's last step)" if final is not classifier else "")
    if not is_classifier(classifier):
        raise EstimatorError(f"{what} is not a classifier")
    if not hasattr(classifier, "predict_proba"):
        name = type(final).__name__
        raise EstimatorError(
            f"{what} has no predict_proba, and the API answers probabilities: wrap it in "
            f"sklearn.calibration.CalibratedClassifierCV (in Python CalibratedClassifierCV({name}()); with train.py "
            f"--estimator sklearn.calibration.CalibratedClassifierCV "
            f'--param \'estimator={{"estimator": "{import_path(type(final))}"}}\')'
        )
    parts = [classifier, *(v for v in classifier.get_params(deep=True).values() if isinstance(v, BaseEstimator))]
    for part in parts:
        if type(part).__module__ == "__main__":
            raise EstimatorError(
                f"{type(part).__name__} is defined in __main__ (a notebook or a script): the API could not import it "
                "to load the model; define it in a module the API can import"
            )


def seeded(estimator: BaseEstimator, seed: int) -> BaseEstimator:
    """Give every `random_state` left unset (None), nested ones included, the training seed: reproducible models."""
    unset = {
        key: seed
        for key, value in estimator.get_params(deep=True).items()
        if key.rsplit("__", 1)[-1] == "random_state" and value is None
    }
    return estimator.set_params(**unset) if unset else estimator


def build_pipeline(estimator: BaseEstimator) -> Pipeline:
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


def as_pipeline(classifier: Any) -> tuple[Pipeline, str]:
    """A fresh (cloned) pipeline for `classifier`: its own when it is a Pipeline, else the contract's around it.
    Returns it with what its preprocessing is (`own` or `contract`)."""
    check_classifier(classifier)
    try:
        fresh = clone(classifier)
    except Exception as error:
        raise EstimatorError(f"cannot copy {type(classifier).__name__} unfitted: {_one_line(error)}") from None
    if isinstance(fresh, Pipeline):
        return fresh, "own"
    return build_pipeline(fresh), "contract"


@dataclass(frozen=True, repr=False)
class Saved:
    """What `train_and_save` saved: the new tag, the promotion gate's decision, and the trained model."""

    tag: str
    decision: Decision
    trained: TrainedModel

    def __repr__(self) -> str:
        d = self.decision
        return f"Saved(tag={self.tag!r}, status={d.status!r}, {d.metric}={d.score:.4f}, reason={d.reason!r})"


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified hold-out split: the test part is never seen by fitting or cross-validation."""
    return train_test_split(frame, test_size=TEST_SIZE, stratify=frame[TARGET], random_state=seed)


def train(
    algorithm: str,
    frame: pd.DataFrame,
    seed: int = DEFAULT_SEED,
    compile: bool = True,
    *,
    classifier: Any = None,
) -> TrainedModel:
    """Cross-validate on the training part, fit on it, score on the held-out part, and compile to ONNX.

    `algorithm` is the model's name (`penguins-<algorithm>`); `classifier` an unfitted classifier or a complete
    Pipeline over the contract's columns (None: the built-in `ALGORITHMS[algorithm]`). It is cloned, not changed.
    """
    try:
        check_model_name(algorithm)
    except ValueError as error:
        raise EstimatorError(str(error)) from None
    if classifier is None:
        if algorithm not in ALGORITHMS:
            raise KeyError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)} or give a classifier")
        classifier = ALGORITHMS[algorithm](seed)
    pipeline, preprocessing = as_pipeline(classifier)
    pipeline = seeded(pipeline, seed)
    train_part, test_part = split(frame, seed)
    x_train, y_train = train_part[list(FEATURES)], train_part[TARGET]
    x_test, y_test = test_part[list(FEATURES)], test_part[TARGET]

    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    try:  # fitted first: a bad parameter value is reported by the estimator itself, before five CV fits
        pipeline.fit(x_train, y_train)
        predicted = pipeline.predict(x_test)
        pipeline.predict_proba(x_test)
        cv_scores = cross_val_score(pipeline, x_train, y_train, cv=folds, scoring="accuracy", error_score="raise")
    except Exception as error:
        what = "the pipeline" if preprocessing == "own" else import_path(type(pipeline.steps[-1][1]))
        raise EstimatorError(
            f"fitting {what} on the contract's columns ({', '.join(FEATURES)}) failed: {_one_line(error)}"
        ) from error
    classes = [str(c) for c in pipeline.classes_]

    metrics = {
        "cv_accuracy_mean": float(np.mean(cv_scores)),
        "cv_accuracy_std": float(np.std(cv_scores)),
        "cv_folds": CV_FOLDS,
        "test_accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
        "confusion_matrix": confusion_matrix(y_test, predicted, labels=classes).tolist(),
    }
    estimator = describe(pipeline.steps[-1][1])
    provenance = {
        "classes": classes,
        # JSON text: BentoML metadata takes no None, and the schema has `"default": null`.
        "feature_schema": json.dumps(Penguin.model_json_schema()),
        "features": {"categorical": list(CATEGORICAL_FEATURES), "numeric": list(NUMERIC_FEATURES)},
        # How to train it again: train.py --estimator <estimator> --param key=value for each of estimator_params.
        "estimator": estimator["estimator"],
        "estimator_params": json.dumps(estimator["params"]),  # JSON text: parameters may be None
        "preprocessing": preprocessing,
        "data_fingerprint": fingerprint(frame),
        "data_rows": len(frame),
        "train_rows": len(train_part),
        "test_rows": len(test_part),
        "seed": seed,
        "library_versions": library_versions(),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    trained = TrainedModel(algorithm, pipeline, metrics, provenance)
    try:
        trained.explanation = build_explanation(pipeline, x_train, y_train, x_test, y_test, seed)
    except Exception as error:  # e.g. an own pipeline whose preprocessing yields no numbers: explain answers 409
        trained.provenance["explanation"] = f"none: {_one_line(error)}"
    if compile:
        try:
            trained.onnx = compile_onnx(pipeline)
            trained.compiled = {"format": "onnx", **check_compiled(pipeline, trained.onnx, frame)}
        except Exception as error:  # any conversion failure: the sklearn pipeline serves instead
            trained.onnx = None
            trained.compiled = {"format": "none", "reason": _one_line(error)}
    return trained


def train_and_save(
    classifier: Any,
    name: str,
    *,
    frame: pd.DataFrame | None = None,
    seed: int = DEFAULT_SEED,
    tolerance: float = DEFAULT_TOLERANCE,
    gate: bool = True,
) -> Saved:
    """Train `classifier` as the model `penguins-<name>` exactly as `train.py` does, and save it through the gate.

    - `classifier`: an unfitted scikit-learn classifier with `predict_proba` (it is wrapped in the contract's
      preprocessing), or a complete `Pipeline` over the contract's columns (`penguins.contract.FEATURES`);
      it is cloned, and every `random_state` it leaves unset gets `seed`;
    - `name`: lowercase words joined by hyphens (`extra-trees`); the API serves it at `classify_<name>`;
    - `frame`: the training rows (default: the bundled Palmer Penguins dataset);
    - `tolerance`, `gate`: the promotion gate (penguins.gate): a version whose held-out accuracy is worse than the
      served one's by more than `tolerance` is saved labelled rejected and not served; `gate=False` promotes it.

    Returns the new tag, the gate's decision and the trained model; the API serves it after its `reload`.
    Raises `EstimatorError` (nothing saved) when the classifier cannot be trained or served.
    """
    source = None
    if frame is None:
        frame, source = load_penguins(), BUNDLED_SOURCE
    trained = train(name, frame, seed, classifier=classifier)
    if source is not None:
        trained.provenance["data_source"] = source
    tag, decision = save_gated(trained, tolerance, gate=gate)
    return Saved(tag, decision, trained)


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("bentoml", "scikit-learn", "numpy", "pandas", "skl2onnx", "onnxruntime")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default)
    except Exception:  # arrays and the like: compared by identity
        return value is not default


def _plain(value: Any) -> Any:
    """The value if JSON can carry it, else its repr."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _arguments(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
