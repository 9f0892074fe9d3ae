"""One stored model read into memory: its predictor (ONNX when compiled, else the pipeline), its labels and
metrics, and its explanation data; what a request predicts and explains with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from penguins.contract import Penguin, Prediction
from penguins.errors import reason
from penguins.explain import CUSTOM_OBJECT as EXPLAIN_OBJECT
from penguins.explain import Explainer, Explanation
from penguins.predict import OnnxPredictor, Predictor, SklearnPredictor, columns_of
from penguins.scan import StoredModel


@dataclass(frozen=True)
class LoadedModel:
    name: str
    tag: str
    algorithm: str
    metadata: dict[str, Any]
    predictor: Predictor
    # The explanation data saved with the model; None for a model saved before explanations existed.
    explainer: Explainer | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    @property
    def cv_accuracy(self) -> float:
        return float(self.metadata.get("cv_accuracy_mean", 0.0))

    def predict(self, penguins: Sequence[Penguin]) -> list[dict[str, Any]]:
        """One `Prediction`-shaped row per penguin, built from the arrays directly.

        Plain dicts, not pydantic objects: for 10,000 penguins building `Prediction`s cost ~250 ms, these ~20 ms.
        """
        labels, probabilities = self.predictor.predict(columns_of(penguins))
        classes, tag = self.classes, self.tag
        return [
            {"species": label, "probabilities": dict(zip(classes, row, strict=True)), "model": tag}
            for label, row in zip(
                np.asarray(labels).tolist(), np.asarray(probabilities, dtype=np.float64).tolist(), strict=True
            )
        ]

    def explain(self, penguin: Penguin, k: int) -> Explanation:
        """The prediction (the same predictor as classify) with the saved explanation data around it."""
        if self.explainer is None:
            raise LookupError(f"model {self.tag} was saved without explanation data")
        return self.explainer.explain(penguin, Prediction.model_validate(self.predict([penguin])[0]), k)


def load(stored: StoredModel, compiled: bool = True) -> LoadedModel:
    """Read one model from disk: the ONNX form when it was saved with one (and wanted), else the pipeline."""
    # Imported here: bentoml takes seconds to import, paid only where a model is loaded.
    import bentoml
    from bentoml import Model

    model = Model.from_path(stored.path)
    metadata = dict(model.info.metadata)
    try:
        pipeline = bentoml.sklearn.load_model(model)
        classes = [str(c) for c in pipeline.classes_]
    except Exception as error:  # a pickle error says little by itself ("KeyError: 110")
        hint = ""
        if isinstance(error, ModuleNotFoundError):  # trained where a package was installed that the API lacks
            hint = (
                f": the API needs every module the model was trained with; install what provides {error.name!r} "
                "where the API runs (pyproject.toml, then rebuild the image)"
            )
        raise ValueError(f"cannot unpickle the saved pipeline ({reason(error)}){hint}") from error
    predictor: Predictor = SklearnPredictor(pipeline)
    if compiled:
        try:
            onnx_bytes = model.custom_objects.get("onnx")
            if onnx_bytes:
                predictor = OnnxPredictor(onnx_bytes, classes)
        except Exception as error:
            raise ValueError(f"cannot open the compiled ONNX form ({reason(error)})") from error
    explainer = None
    try:
        saved = model.custom_objects.get(EXPLAIN_OBJECT)
        if saved is not None:
            explainer = Explainer.from_saved(saved, pipeline)
    except Exception as error:
        raise ValueError(f"cannot use the saved explanation data ({reason(error)})") from error
    return LoadedModel(stored.name, stored.tag, stored.algorithm, metadata, predictor, explainer)
