"""Peer: KServe's model server with a custom `kserve.Model` (the documented way to serve a Python model; its
sklearnserver is not on PyPI), V1 protocol: `{"instances": [{field: value, ...}, ...]}`.

    python benchmarks/peers/kserve_model.py --model_dir <exported model> --http_port N [--workers 2]
"""

import argparse
from pathlib import Path

import joblib
import kserve
import pandas as pd
from kserve.protocol.rest import server as rest_server

from penguins.contract import FEATURES

# KServe 0.21 has no option for the HTTP address: RESTServer hard-codes uvicorn's host "0.0.0.0". Bind loopback.
_init = rest_server.RESTServer.__init__


def _loopback_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.config.host = "127.0.0.1"


rest_server.RESTServer.__init__ = _loopback_init


class Penguins(kserve.Model):
    def __init__(self, name: str, model_dir: Path):
        super().__init__(name)
        self.model_dir = model_dir
        self.pipeline = None

    def load(self) -> bool:
        self.pipeline = joblib.load(self.model_dir / "pipeline.joblib")
        self.classes = [str(c) for c in self.pipeline.classes_]
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        frame = pd.DataFrame.from_records(payload["instances"], columns=list(FEATURES))
        labels, probabilities = self.pipeline.predict(frame), self.pipeline.predict_proba(frame)
        return {
            "predictions": [
                {"species": str(label), "probabilities": dict(zip(self.classes, row, strict=True))}
                for label, row in zip(labels.tolist(), probabilities.tolist(), strict=True)
            ]
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True)
    args, _ = parser.parse_known_args()
    model = Penguins(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])
