"""Why a model said what it said: its nearest training penguins, a 2-D PCA map of its training set, and which
features matter to it.

Everything an explanation needs is computed once, at training time (`build`), and saved with the model as the
`explain` custom object (a plain dict of lists and numpy arrays: unpickling it needs no code of ours). The service
loads it with the model (`Explainer.from_saved`) and only measures distances and projects one penguin per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from penguins.contract import FEATURES, TARGET, Penguin, Prediction, Species
from penguins.predict import columns_from_frame, columns_of, frame_from_columns

FORMAT = 1
CUSTOM_OBJECT = "explain"  # key in the model's custom_objects
DEFAULT_NEIGHBOURS = 5
MAX_NEIGHBOURS = 50
PERMUTATION_REPEATS = 10
# A stored preprocessed row may differ from a fresh transform by float noise only.
CONSISTENCY_TOLERANCE = 1e-6


# --- the API's output models ------------------------------------------------------------------------------------


class MapPoint(BaseModel):
    x: float = Field(description="First principal component")
    y: float = Field(description="Second principal component")


class Neighbour(BaseModel):
    """One training penguin close to the one explained."""

    index: int = Field(description="Its row in the model's training set (the order of training_map's points)")
    species: Species
    distance: float = Field(description="Euclidean distance in the model's preprocessed (scaled, one-hot) space")
    penguin: Penguin = Field(description="Its measurements as recorded")
    pca: MapPoint


class FeatureImportance(BaseModel):
    method: Literal["impurity", "permutation"] = Field(
        description="impurity: the model's own feature_importances_; permutation: the drop in held-out accuracy "
        "when the feature is shuffled (computed at training time)"
    )
    values: dict[str, float] = Field(description="Importance per input feature (one-hot columns summed)")


class Explanation(BaseModel):
    """A prediction with the training penguins nearest to it and its place on the model's PCA map."""

    prediction: Prediction
    neighbours: list[Neighbour] = Field(description="The k nearest training penguins, nearest first")
    pca: MapPoint = Field(description="The penguin on the model's 2-D PCA map of its training set")
    importance: FeatureImportance


class TrainingPoint(BaseModel):
    x: float
    y: float
    species: Species


class TrainingMap(BaseModel):
    """The model's training penguins on the 2-D PCA map of its preprocessed training set."""

    model: str = Field(description="Tag (name:version) of the model the map belongs to")
    explained_variance: list[float] = Field(description="Share of the variance along each of the two axes")
    points: list[TrainingPoint] = Field(description="One per training penguin, in training-set order")


# --- training time ------------------------------------------------------------------------------------------------


def frame_of(penguins: Sequence[Penguin]) -> pd.DataFrame:
    """Penguins as the pipeline's input rows, built as the sklearn predictor builds them."""
    return frame_from_columns(columns_of(penguins))


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def input_feature_of(column: str) -> str:
    """`numeric__bill_length_mm` -> `bill_length_mm`; `categorical__island_Biscoe` -> `island`."""
    name = column.split("__", 1)[-1]
    matches = [f for f in FEATURES if name == f or name.startswith(f + "_")]
    if not matches:
        raise ValueError(f"preprocessed column {column!r} belongs to no contract feature")
    return max(matches, key=len)


def preprocessing_of(pipeline: Any) -> Any:
    """Every step before the classifier: the contract's preprocessing, or an own pipeline's steps."""
    return pipeline[:-1]


def importance(pipeline: Any, x_test: pd.DataFrame, y_test: pd.Series, seed: int) -> dict[str, Any]:
    """The model's own importances when it has them and its columns trace back to the contract's features, else
    permutation importance on the held-out part (any classifier: MLP, SVM, KNN, ...)."""
    native = getattr(pipeline[-1], "feature_importances_", None)
    if native is not None:
        try:
            columns = preprocessing_of(pipeline).get_feature_names_out()
            values = dict.fromkeys(FEATURES, 0.0)
            for column, value in zip(columns, native, strict=True):
                values[input_feature_of(column)] += float(value)
            return {"method": "impurity", "values": values}
        except (AttributeError, ValueError):  # an own pipeline's columns need not name the features
            pass
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        pipeline, x_test, y_test, n_repeats=PERMUTATION_REPEATS, random_state=seed, scoring="accuracy", n_jobs=1
    )
    return {
        "method": "permutation",
        "values": {f: float(v) for f, v in zip(x_test.columns, result.importances_mean, strict=True)},
    }


def build(
    pipeline: Any, x_train: pd.DataFrame, y_train: pd.Series, x_test: pd.DataFrame, y_test: pd.Series, seed: int
) -> dict[str, Any]:
    """What explanations of this fitted pipeline need, as a picklable plain dict."""
    from sklearn.decomposition import PCA

    preprocessed = _dense(preprocessing_of(pipeline).transform(x_train))
    pca = PCA(n_components=2, svd_solver="full").fit(preprocessed)
    rows = columns_from_frame(x_train)
    return {
        "format": FORMAT,
        "rows": rows,
        TARGET: [str(s) for s in y_train.tolist()],
        "preprocessed": preprocessed,
        "pca_mean": pca.mean_.astype(np.float64),
        "pca_components": pca.components_.astype(np.float64),
        "pca_explained_variance": pca.explained_variance_ratio_.astype(np.float64),
        "pca_points": pca.transform(preprocessed).astype(np.float64),
        "importance": importance(pipeline, x_test, y_test, seed),
    }


# --- serving time -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explainer:
    """The saved explanation data of one model, with the model's own fitted preprocessing."""

    preprocess: Any
    rows: dict[str, list[Any]]
    species: tuple[str, ...]
    preprocessed: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    explained_variance: tuple[float, ...]
    points: np.ndarray
    importance: FeatureImportance

    @classmethod
    def from_saved(cls, saved: dict[str, Any], pipeline: Any) -> Explainer:
        """Check the saved data against the pipeline it came with; raise ValueError when they do not belong."""
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"explanation data of an unknown format (expected format {FORMAT})")
        preprocessed = np.asarray(saved["preprocessed"], dtype=np.float64)
        species = tuple(saved[TARGET])
        rows = {f: list(saved["rows"][f]) for f in FEATURES}
        components = np.asarray(saved["pca_components"], dtype=np.float64)
        points = np.asarray(saved["pca_points"], dtype=np.float64)
        n, d = preprocessed.shape
        if len(species) != n or any(len(v) != n for v in rows.values()) or points.shape != (n, 2):
            raise ValueError("explanation data: training rows, species and map points differ in number")
        if components.shape != (2, d):
            raise ValueError(f"explanation data: PCA components of shape {components.shape}, expected (2, {d})")
        explainer = cls(
            preprocess=preprocessing_of(pipeline),
            rows=rows,
            species=species,
            preprocessed=preprocessed,
            pca_mean=np.asarray(saved["pca_mean"], dtype=np.float64),
            pca_components=components,
            explained_variance=tuple(float(v) for v in saved["pca_explained_variance"]),
            points=points,
            importance=FeatureImportance.model_validate(saved["importance"]),
        )
        # The stored rows must come out of this model's preprocessing as stored: else it is another model's data.
        first = explainer.transform(frame_of([explainer.training_penguin(0)]))
        if first.shape != (1, d) or not np.allclose(first[0], preprocessed[0], atol=CONSISTENCY_TOLERANCE):
            raise ValueError("explanation data does not match the model's preprocessing")
        return explainer

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return _dense(self.preprocess.transform(frame))

    def project(self, preprocessed: np.ndarray) -> np.ndarray:
        return (preprocessed - self.pca_mean) @ self.pca_components.T

    def training_penguin(self, index: int) -> Penguin:
        # model_construct: the rows are the training data as recorded, already in the contract's shape.
        return Penguin.model_construct(**{f: self.rows[f][index] for f in FEATURES})

    def nearest(self, preprocessed_row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and distances of the k nearest training penguins (ties: lower index first)."""
        distances = np.sqrt(((self.preprocessed - preprocessed_row) ** 2).sum(axis=1))
        order = np.argsort(distances, kind="stable")[:k]
        return order, distances[order]

    def explain(self, penguin: Penguin, prediction: Prediction, k: int = DEFAULT_NEIGHBOURS) -> Explanation:
        row = self.transform(frame_of([penguin]))[0]
        x, y = self.project(row[None, :])[0]
        indices, distances = self.nearest(row, k)
        neighbours = [
            Neighbour(
                index=int(i),
                species=self.species[i],
                distance=float(distance),
                penguin=self.training_penguin(int(i)),
                pca=MapPoint(x=float(self.points[i, 0]), y=float(self.points[i, 1])),
            )
            for i, distance in zip(indices, distances, strict=True)
        ]
        return Explanation(
            prediction=prediction,
            neighbours=neighbours,
            pca=MapPoint(x=float(x), y=float(y)),
            importance=self.importance,
        )

    def training_map(self, tag: str) -> TrainingMap:
        return TrainingMap(
            model=tag,
            explained_variance=list(self.explained_variance),
            points=[
                TrainingPoint.model_construct(x=float(px), y=float(py), species=s)
                for (px, py), s in zip(self.points.tolist(), self.species, strict=True)
            ],
        )
