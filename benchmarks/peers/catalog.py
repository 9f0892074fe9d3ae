"""The catalogue of peers: the systems a user would pick instead of ours, serving the same saved pipeline, for
`python -m benchmarks.run --peers`, and how each is installed, started and asked.

Each peer runs in an environment of its own (never the project's dependencies), made once with uv from the pinned
requirements beside this file into ~/.cache/penguins-bench/<peer> (PENGUINS_BENCH_CACHE moves it) and remade when
those requirements change. Every peer binds loopback only and serves the model exported from our store: the
pipeline's own pickle (`saved_model.pkl`) and the ONNX graph saved with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from penguins.scan import scan
from tests.harness import Server, free_port, running

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    path: str  # the prediction route
    ready: str  # answers 200 once the model is loaded
    body: Callable[[list[dict[str, Any]]], dict[str, Any]]  # the request for some penguins (rows of FEATURES)
    answers: Callable[[Any], list[tuple[str, list[float]]]]  # (species, probabilities in class order) per penguin
    command: Callable[[Path, Path, int, int, Path], list[str]]  # (python, model dir, port, workers, scratch dir)


def _rows_answers(classes: list[str]) -> Callable[[Any], list[tuple[str, list[float]]]]:
    def parse(payload: Any) -> list[tuple[str, list[float]]]:
        items = payload["predictions"] if isinstance(payload, dict) else payload
        return [(item["species"], [item["probabilities"][c] for c in classes]) for item in items]

    return parse


def _mlserver_body(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """V2 inference protocol, a pandas DataFrame (`pd`) of one input per column; both outputs asked for."""
    inputs = [
        {
            "name": f,
            "shape": [len(rows)],
            "datatype": "BYTES",
            "parameters": {"content_type": "str"},
            "data": [r[f] for r in rows],
        }
        for f in CATEGORICAL_FEATURES
    ]
    inputs += [
        {"name": f, "shape": [len(rows)], "datatype": "FP64", "data": [r[f] for r in rows]} for f in NUMERIC_FEATURES
    ]
    return {
        "parameters": {"content_type": "pd"},
        "inputs": inputs,
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }


def _mlserver_answers(payload: dict[str, Any]) -> list[tuple[str, list[float]]]:
    outputs = {o["name"]: o for o in payload["outputs"]}
    labels, proba = outputs["predict"]["data"], outputs["predict_proba"]
    width = proba["shape"][1]
    rows = [proba["data"][i * width : (i + 1) * width] for i in range(len(labels))]
    return list(zip(labels, rows, strict=True))


def _mlserver_command(python: Path, model: Path, port: int, workers: int, scratch: Path) -> list[str]:
    repository = scratch / f"mlserver-{port}"
    (repository / "penguins").mkdir(parents=True)
    settings = {
        "debug": False,
        "host": LOOPBACK,  # HTTP, gRPC and metrics alike
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": workers,
        "metrics_dir": str(repository / "metrics"),  # not ./.metrics, its default
    }
    (repository / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "penguins",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model / "pipeline.joblib")},
    }
    (repository / "penguins" / "model-settings.json").write_text(json.dumps(model_settings))
    return [str(python.parent / "mlserver"), "start", str(repository)]


def _kserve_command(python: Path, model: Path, port: int, workers: int, scratch: Path) -> list[str]:
    script = str(HERE / "kserve_model.py")
    return [str(python), script, "--model_dir", str(model), "--model_name", "penguins", "--http_port", str(port)] + [
        "--workers",
        str(workers),
        "--enable_grpc",
        "false",
    ]


def _uvicorn(app: str) -> Callable[[Path, Path, int, int, Path], list[str]]:
    def command(python: Path, model: Path, port: int, workers: int, scratch: Path) -> list[str]:
        return [str(python), "-m", "uvicorn", app, "--host", LOOPBACK, "--port", str(port), "--workers", str(workers)]

    return command


def peers(classes: list[str]) -> list[Peer]:
    answers = _rows_answers(classes)
    return [
        Peer(
            "mlserver",
            "MLServer 1.7 + mlserver-sklearn (V2, pandas codec)",
            "/v2/models/penguins/infer",
            "/v2/models/penguins/ready",
            _mlserver_body,
            _mlserver_answers,
            _mlserver_command,
        ),
        Peer(
            "kserve",
            "KServe 0.21, custom kserve.Model (V1)",
            "/v1/models/penguins:predict",
            "/v1/models/penguins",
            lambda rows: {"instances": rows},
            answers,
            _kserve_command,
        ),
        Peer(
            "fastapi-sklearn",
            "FastAPI + uvicorn, sklearn Pipeline",
            "/predict",
            "/livez",
            lambda rows: {"penguins": rows},
            answers,
            _uvicorn("benchmarks.peers.fastapi_sklearn:app"),
        ),
        Peer(
            "fastapi-onnx",
            "FastAPI + uvicorn + onnxruntime, same ONNX graph",
            "/predict",
            "/livez",
            lambda rows: {"penguins": rows},
            answers,
            _uvicorn("benchmarks.peers.fastapi_onnx:app"),
        ),
    ]


def environment(name: str) -> Path:
    """The peer's own interpreter, with its pinned requirements installed (made once, remade when they change)."""
    requirements = (HERE / f"{name}.txt").read_text()
    # A benchmark harness variable, not a setting of the service (penguins/settings.py): read when used.
    home = Path(os.environ.get("PENGUINS_BENCH_CACHE", Path.home() / ".cache" / "penguins-bench")) / name
    python = home / "bin" / "python"
    stamp = home / ".requirements.txt"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements:
        return python
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("the peers' environments are made with uv: pip install uv")
    print(f"making the {name} environment in {home} ...", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([uv, "venv", "-q", "--python", version, str(home)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "-r", str(HERE / f"{name}.txt")], check=True)
    stamp.write_text(requirements)
    return python


def export(home: Path, model_name: str, dest: Path) -> list[str]:
    """The stored model as the peers read it: the pipeline's own pickle, its ONNX graph, its classes."""
    from bentoml import Model  # lazily: importing bentoml costs seconds

    stored = next(s for s in scan(home / "models")[0] if s.name == model_name)
    model = Model.from_path(stored.path)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stored.path / "saved_model.pkl", dest / "pipeline.joblib")  # bentoml.sklearn saves with joblib
    (dest / "model.onnx").write_bytes(model.custom_objects["onnx"])
    classes = [str(c) for c in model.info.metadata["classes"]]
    (dest / "classes.json").write_text(json.dumps(classes))
    return classes


@contextlib.contextmanager
def serve_peer(peer: Peer, model: Path, workers: int, logs: Path) -> Iterator[Any]:
    """Start one peer on a free loopback port in its environment; yields its base URL (a tests.harness.Server)."""
    python = environment(peer.name)
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix=f"peer-{peer.name}-", dir=logs))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "UV_"))},
        "PYTHONPATH": str(ROOT),  # the peers import the penguin contract (penguins/contract.py needs only pydantic)
        "PEER_MODEL_DIR": str(model),
    }
    url = f"http://{LOOPBACK}:{port}"
    command = peer.command(python, model, port, workers, scratch)
    log = logs / f"peer-{peer.name}-w{workers}.log"
    with running(command, log, env, url + peer.ready, timeout=300) as process:
        yield Server(url, process)


def feature_rows(frame: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` penguins drawn from the data set's complete rows (with replacement): labels every predictor agrees on."""
    complete = frame.dropna(subset=list(FEATURES))
    sample = complete.sample(n=n, replace=True, random_state=seed)
    return [
        {f: (v if f in CATEGORICAL_FEATURES else float(v)) for f, v in zip(FEATURES, values, strict=True)}
        for values in sample[list(FEATURES)].itertuples(index=False)
    ]
