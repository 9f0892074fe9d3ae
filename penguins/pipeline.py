"""The retraining pipeline's steps, one function each, for an orchestrator (the Airflow DAG in `dags/`) to call:

    ingest -> clean -> train -> gate -> reload

Each step takes its settings from PENGUINS_* environment variables (penguins/settings.py's `Settings`),
optionally overridden by a dict (the DAG's run parameters), and returns a JSON-able report (Airflow keeps it as the
task's XCom). The model store is BentoML's own ($BENTOML_HOME), as for `train.py`.

Between `train` and `gate` the trained candidates wait as pickles under `$BENTOML_HOME/penguins-staging/` (the
gate's decision is a label, and BentoML sets labels at save time, so nothing is saved before the gate decides);
`gate` saves each with its decision and removes the pickles.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Before anything imports bentoml (none of the modules below does at import time): BentoML reads it once.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from penguins.data import fingerprint  # noqa: E402
from penguins.db import clean as clean_rows  # noqa: E402
from penguins.db import clean_source, load_clean  # noqa: E402
from penguins.db import ingest as ingest_rows  # noqa: E402
from penguins.gate import save_gated  # noqa: E402
from penguins.names import default_store_dir  # noqa: E402
from penguins.settings import Settings  # noqa: E402
from penguins.training import ALGORITHMS  # noqa: E402
from penguins.training import train as fit  # noqa: E402

STAGING = "penguins-staging"


def settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Environment first, then the non-empty overrides (run parameters) on top. Read afresh at every step (not
    get_settings()'s cached copy): a run's parameters are its own."""
    given = {k: v for k, v in (overrides or {}).items() if v not in (None, "", [])}
    return Settings(**given)


def ingest(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    config = settings(overrides)
    return ingest_rows(config.database_url, csv=config.csv).as_dict()


def clean(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return clean_rows(settings(overrides).database_url).as_dict()


def train(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every algorithm on the clean table; leave the candidates in the staging folder for `gate`."""
    config = settings(overrides)
    algorithms = config.models or list(ALGORITHMS)
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        raise ValueError(f"unknown algorithms {unknown}; choose from {', '.join(ALGORITHMS)}")
    frame = load_clean(config.database_url)
    staging_root = default_store_dir().parent / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="run-", dir=staging_root))
    candidates = []
    for algorithm in algorithms:
        trained = fit(algorithm, frame, config.seed)
        trained.provenance["data_source"] = clean_source(config.database_url)
        path = staging / f"{algorithm}.pkl"
        with path.open("wb") as out:
            pickle.dump(trained, out)
        candidates.append(
            {
                "algorithm": algorithm,
                "path": str(path),
                **{k: trained.metrics[k] for k in ("test_accuracy", "cv_accuracy_mean")},
            }
        )
    return {
        "staging": str(staging),
        "rows": len(frame),
        "data_fingerprint": fingerprint(frame),
        "candidates": candidates,
    }


def gate(trained: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save each candidate `train` left, labelled promoted or rejected against the served version, from a fresh
    interpreter: Airflow's task processes import dill, and a pipeline pickled where dill is imported needs dill to
    load (saving.save refuses to save there)."""
    request = json.dumps({"trained": trained, "overrides": overrides})
    done = subprocess.run(
        [sys.executable, "-m", "penguins.pipeline", "gate"], input=request, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the gate step failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gate_here(trained: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    config = settings(overrides)
    decisions = []
    for candidate in trained["candidates"]:
        with open(candidate["path"], "rb") as source:
            model = pickle.load(source)  # written by `train` above, in our own staging folder
        tag, decision = save_gated(model, config.tolerance)
        decisions.append({"algorithm": candidate["algorithm"], "tag": tag, **decision.as_dict()})
    shutil.rmtree(trained["staging"], ignore_errors=True)
    return {
        "promoted": [d["tag"] for d in decisions if d["promoted"]],
        "rejected": [d["tag"] for d in decisions if not d["promoted"]],
        "decisions": decisions,
    }


def reload(overrides: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
    """Ask the API to re-read the store (with the admin token when one is set); fail on any error answer."""
    import httpx  # lazily: only a configured API needs it

    config = settings(overrides)
    if not config.api_url:
        return {"skipped": "PENGUINS_API_URL is not set: no API to reload"}
    headers = {}
    if config.admin_token is not None:
        headers["Authorization"] = f"Bearer {config.admin_token.get_secret_value()}"
    response = httpx.post(f"{config.api_url.rstrip('/')}/reload", headers=headers, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"reload at {config.api_url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


if __name__ == "__main__":  # `gate`'s clean interpreter: the request on stdin, the report as the last line out
    if sys.argv[1:] != ["gate"]:
        raise SystemExit("usage: python -m penguins.pipeline gate < request.json")
    request = json.load(sys.stdin)
    print(json.dumps(_gate_here(request["trained"], request["overrides"])))
