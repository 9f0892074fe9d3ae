"""Peer: FastAPI + uvicorn serving the ONNX form of the saved pipeline with onnxruntime, as a 40-line app would.

PEER_MODEL_DIR=<exported model> uvicorn benchmarks.peers.fastapi_onnx:app   (in its own environment)
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel, Field

from penguins.contract import CATEGORICAL_FEATURES, NUMERIC_FEATURES, Penguin

MODEL_DIR = Path(os.environ["PEER_MODEL_DIR"])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
CLASSES = json.loads((MODEL_DIR / "classes.json").read_text())
app = FastAPI()


class Request(BaseModel):
    penguins: list[Penguin] = Field(min_length=1)


@app.get("/livez")
def livez() -> dict:
    return {}


@app.post("/predict")
def predict(request: Request) -> list[dict]:
    feeds = {
        f: np.array([getattr(p, f) or "" for p in request.penguins], dtype=object)[:, None]
        for f in CATEGORICAL_FEATURES
    }
    feeds |= {
        f: np.array([getattr(p, f) for p in request.penguins], dtype=np.float32)[:, None] for f in NUMERIC_FEATURES
    }
    labels, probabilities = session.run(None, feeds)
    return [
        {"species": label, "probabilities": dict(zip(CLASSES, row, strict=True))}
        for label, row in zip(labels.tolist(), probabilities.astype(np.float64).tolist(), strict=True)
    ]
