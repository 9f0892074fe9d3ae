"""Peer: FastAPI + uvicorn serving the saved scikit-learn pipeline itself (a DataFrame per request).

PEER_MODEL_DIR=<exported model> uvicorn benchmarks.peers.fastapi_sklearn:app   (in its own environment)
"""

import os
from pathlib import Path

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel, Field

from penguins.contract import FEATURES, Penguin

pipeline = joblib.load(Path(os.environ["PEER_MODEL_DIR"]) / "pipeline.joblib")
CLASSES = [str(c) for c in pipeline.classes_]
app = FastAPI()


class Request(BaseModel):
    penguins: list[Penguin] = Field(min_length=1)


@app.get("/livez")
def livez() -> dict:
    return {}


@app.post("/predict")
def predict(request: Request) -> list[dict]:
    frame = pd.DataFrame([p.model_dump() for p in request.penguins], columns=list(FEATURES))
    labels, probabilities = pipeline.predict(frame), pipeline.predict_proba(frame)
    return [
        {"species": str(label), "probabilities": dict(zip(CLASSES, row, strict=True))}
        for label, row in zip(labels.tolist(), probabilities.tolist(), strict=True)
    ]
