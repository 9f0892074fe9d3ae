"""A trained model saved with its provenance: the one raw save into the BentoML model store, with the metrics,
provenance, ONNX form and explanation data, published to the model repository when one is set. Only the
promotion gate calls it (training saves through the gate)."""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass, field
from typing import Any

from sklearn.pipeline import Pipeline

from penguins import publishing as repository
from penguins.explain import CUSTOM_OBJECT as EXPLAIN_OBJECT
from penguins.names import labels_for, model_name


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


def save(trained: TrainedModel, labels: dict[str, str] | None = None) -> str:
    """The one raw save into the BentoML model store (BENTOML_HOME), published to the model repository when one is
    set (PENGUINS_MODEL_REPOSITORY); returns the new tag. Only the promotion gate (gate.save_gated) calls it, with its
    decision as the `status` label added to the project's own."""
    # Imported here: bentoml takes seconds to import, paid only by a process that saves.
    import bentoml

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
    _refuse_dill_picklers()
    saved = bentoml.sklearn.save_model(
        trained.name,
        trained.pipeline,
        labels={**labels_for(trained.algorithm), **(labels or {})},
        metadata=metadata,
        custom_objects=custom_objects or None,
    )
    repository.publish(str(saved.tag))  # every saved version, promoted or rejected: replicas elsewhere need both
    return str(saved.tag)


def _refuse_dill_picklers() -> None:
    """Refuse to save where dill's reducers are in the pickler joblib (hence bentoml.sklearn) saves with: importing
    dill (Airflow does, in the DAG's task processes) adds them to the pure-Python pickler's dispatch table, and a
    pipeline saved so needs dill to load (`dill._dill._load_type` for its slices) — the API's image has none. The
    DAG's gate step saves in a clean interpreter (`penguins.pipeline.gate`)."""
    if "dill" not in sys.modules:
        return
    pending = [pickle._Pickler]
    while pending:
        cls = pending.pop()
        if any(str(getattr(reducer, "__module__", "")).startswith("dill") for reducer in cls.dispatch.values()):
            raise RuntimeError(
                "dill is imported in this process and its reducers are in the pickler models are saved with: "
                "a model saved here would need dill to load, and the API has none. Save from an interpreter "
                "that has not imported dill (penguins.pipeline.gate does so for the Airflow DAG)."
            )
        pending.extend(cls.__subclasses__())
