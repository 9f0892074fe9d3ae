"""Retrain the penguin classifiers from SQL and put the ones that pass the promotion gate into service.

    ingest -> clean -> train -> gate -> reload

Each task calls one function of `penguins.pipeline` (the package does the work; this file only wires it). Settings
come from the worker's environment (PENGUINS_DATABASE_URL, BENTOML_HOME, PENGUINS_API_URL, PENGUINS_ADMIN_TOKEN,
PENGUINS_MODELS, PENGUINS_TOLERANCE, PENGUINS_CSV); the run parameters below override the non-secret ones.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task


@task
def ingest(params=None):
    from penguins import pipeline

    return pipeline.ingest(params)


@task
def clean(params=None):
    from penguins import pipeline

    return pipeline.clean(params)


@task
def train(params=None):
    from penguins import pipeline

    return pipeline.train(params)


@task
def gate(trained, params=None):
    from penguins import pipeline

    return pipeline.gate(trained, params)


@task
def reload(params=None):
    from penguins import pipeline

    return pipeline.reload(params)


@dag(
    dag_id="penguins_retrain",
    description="ingest -> clean -> train -> gate -> reload the penguin classifiers",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["penguins"],
    params={
        "database_url": Param(None, type=["null", "string"], description="SQLAlchemy URL (default: environment)"),
        "csv": Param(None, type=["null", "string"], description="CSV to ingest instead of the bundled rows"),
        "models": Param(None, type=["null", "array"], description="algorithms to train (default: all)"),
        "tolerance": Param(None, type=["null", "number"], description="promotion gate tolerance (default 0.01)"),
    },
)
def penguins_retrain():
    trained = train()
    ingest() >> clean() >> trained
    gate(trained) >> reload()


penguins_retrain()
