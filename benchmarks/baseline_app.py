"""The baseline: how the workshop projects serve a model. FastAPI + uvicorn, the saved sklearn pipeline cached in
memory, one pandas row and one predict call per request.

    BENTOML_HOME=... BASELINE_MODEL=penguins-random-forest uvicorn benchmarks.baseline_app:app
"""

import os

import bentoml
import pandas as pd
from fastapi import FastAPI

from penguins.contract import FEATURES, Penguin

model = bentoml.sklearn.load_model(f"{os.environ.get('BASELINE_MODEL', 'penguins-random-forest')}:latest")
app = FastAPI()


@app.get("/livez")
def livez() -> dict:
    return {}


@app.post("/predict")
def predict(penguin: Penguin) -> dict:
    row = pd.DataFrame([penguin.model_dump()], columns=list(FEATURES))
    probabilities = model.predict_proba(row)[0]
    return {
        "species": str(model.predict(row)[0]),
        "probabilities": dict(zip(map(str, model.classes_), map(float, probabilities), strict=True)),
    }
