"""Fast prediction: penguins in, species and probabilities out, through ONNX when the model carries it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

import numpy as np
import pandas as pd

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, Penguin

# Largest difference in any probability tolerated between the ONNX form and the sklearn pipeline on the whole
# dataset. Trees in ONNX compare in float32: random forests drift by up to ~0.09 near split thresholds.
PROBABILITY_TOLERANCE = 0.1
# The ONNX imputer only understands a string marker for a missing category.
MISSING_CATEGORY = ""


_ROW = attrgetter(*FEATURES)


def columns_of(penguins: Sequence[Penguin | tuple]) -> dict[str, list[Any]]:
    """Column-wise values in contract order: what both predictors take.

    Takes `Penguin`s, `FEATURES`-ordered tuples (a columnar request's rows) or both (a batch of several requests);
    a columnar request's own columns (`PenguinRows.columns`) are used as they are.
    """
    columns = getattr(penguins, "columns", None)
    if isinstance(columns, dict):
        return columns
    rows = [p if type(p) is tuple else _ROW(p) for p in penguins]
    if not rows:
        return {feature: [] for feature in FEATURES}
    return {feature: list(values) for feature, values in zip(FEATURES, zip(*rows, strict=True), strict=True)}


def columns_from_frame(frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {feature: [None if pd.isna(v) else v for v in frame[feature].tolist()] for feature in FEATURES}


def frame_from_columns(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """The sklearn pipeline's input rows; a missing category is NaN, as in training."""
    frame = pd.DataFrame(columns, columns=list(FEATURES))
    for feature in CATEGORICAL_FEATURES:
        frame[feature] = frame[feature].astype(object).where(frame[feature].notna(), np.nan)
    return frame


class Predictor(Protocol):
    kind: str
    classes: tuple[str, ...]

    def predict(self, columns: dict[str, list[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Return (labels, probabilities with one column per class in `classes` order)."""
        ...


@dataclass(frozen=True)
class SklearnPredictor:
    pipeline: Any
    kind: str = "sklearn"

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.pipeline.classes_)

    def predict(self, columns: dict[str, list[Any]]) -> tuple[np.ndarray, np.ndarray]:
        frame = frame_from_columns(columns)
        # predict, not argmax(predict_proba): for SVC the two can differ, and the label must be sklearn's.
        return self.pipeline.predict(frame), self.pipeline.predict_proba(frame)


class OnnxPredictor:
    kind = "onnx"

    def __init__(self, onnx_bytes: bytes, classes: Sequence[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread per session: the server runs several requests at once; ORT's own pool would fight them.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.classes = tuple(classes)

    def predict(self, columns: dict[str, list[Any]]) -> tuple[np.ndarray, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for feature in CATEGORICAL_FEATURES:
            values = [MISSING_CATEGORY if v is None else v for v in columns[feature]]
            feeds[feature] = np.array(values, dtype=object).reshape(-1, 1)
        for feature in NUMERIC_FEATURES:
            feeds[feature] = np.array(columns[feature], dtype=np.float32).reshape(-1, 1)
        labels, probabilities = self.session.run(None, feeds)
        return labels, probabilities


def compile_onnx(pipeline: Any) -> bytes:
    """The pipeline as ONNX: one input per contract feature, probabilities as a plain tensor."""
    import copy
    import warnings

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    onnx_ready = copy.deepcopy(pipeline)
    # Same fitted imputer, but told that "" marks a missing category: skl2onnx converts string imputers only.
    for _, preprocess in onnx_ready.steps[:-1]:
        for _, transformer, _ in getattr(preprocess, "transformers_", ()):
            for step in getattr(transformer, "steps", ()):
                if getattr(step[1], "strategy", None) == "most_frequent":
                    step[1].missing_values = MISSING_CATEGORY
    inputs = [(f, StringTensorType([None, 1])) for f in CATEGORICAL_FEATURES]
    inputs += [(f, FloatTensorType([None, 1])) for f in NUMERIC_FEATURES]
    estimator = onnx_ready.steps[-1][1]
    with warnings.catch_warnings():
        # skl2onnx reads attributes scikit-learn has deprecated (SVC.probA_); not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        model = to_onnx(onnx_ready, initial_types=inputs, options={id(estimator): {"zipmap": False}}, target_opset=17)
    return model.SerializeToString()


def check_compiled(pipeline: Any, onnx_bytes: bytes, frame: pd.DataFrame) -> dict[str, Any]:
    """Compare the ONNX form with the pipeline on `frame`; raise if a label differs or a probability drifts."""
    columns = columns_from_frame(frame)
    sk_labels, sk_proba = SklearnPredictor(pipeline).predict(columns)
    onnx_labels, onnx_proba = OnnxPredictor(onnx_bytes, pipeline.classes_).predict(columns)
    mismatched = int((np.asarray(sk_labels) != np.asarray(onnx_labels)).sum())
    drift = float(np.abs(sk_proba - onnx_proba).max())
    if mismatched or drift > PROBABILITY_TOLERANCE:
        raise ValueError(
            f"ONNX form disagrees with the pipeline on {len(frame)} rows: {mismatched} labels differ, "
            f"max probability difference {drift:.4f} (tolerance {PROBABILITY_TOLERANCE})"
        )
    return {"rows": len(frame), "label_mismatches": mismatched, "max_probability_difference": drift}
