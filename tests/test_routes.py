"""Per-model routes follow the store: after one reload new models (an ExtraTrees, an MLP with `--param`s, each by
`train.py --estimator`) have their own typed endpoint, OpenAPI entry and client method, a removed one loses them,
and no request fails meanwhile (real `bentoml serve`, real client)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

import bentoml
import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import model_name, route_of
from tests.harness import run_train, serve, workers_that_answered

pytestmark = pytest.mark.integration

BODY = {"penguins": [EXAMPLE_PENGUIN]}
TOKEN = "routes-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MLP = ["--estimator", "sklearn.neural_network.MLPClassifier", "--name", "mlp"]
MLP += ["--param", "hidden_layer_sizes=[32,16]", "--param", "max_iter=2000"]


def _client_loop(url: str, stop: threading.Event, latencies: list, errors: list) -> None:
    """A keep-alive client on routes that exist before, during and after the change."""
    paths = ["/classify_logistic_regression", "/classify"]
    sent = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            path = paths[sent % 2]
            sent += 1
            started = time.perf_counter()
            try:
                response = http.post(path, json=BODY)
            except httpx.HTTPError as error:
                errors.append(f"{path}: {error!r}")
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code} {response.text[:200]}")


def _save_without_the_gate(home) -> None:
    """As BentoML's tutorials teach: no labels, no gate. It must be reported, never served or ignored silently."""
    code = (
        "import bentoml\nfrom sklearn.tree import DecisionTreeClassifier\nfrom penguins.data import load_penguins\n"
        "from penguins.training import build_pipeline\nfrom penguins.contract import FEATURES, TARGET\n"
        "f = load_penguins()\n"
        "pipe = build_pipeline(DecisionTreeClassifier()).fit(f[list(FEATURES)], f[TARGET])\n"
        "bentoml.sklearn.save_model('penguins-decision-tree', pipe)"
    )
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "BENTOML_HOME": str(home)}, check=True)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_model_gets_its_route_and_a_removed_one_loses_it_with_no_request_failing(tmp_path, figures, workers):
    home = tmp_path / "home"
    run_train(home, "--models", "logistic-regression", "knn")
    output = tmp_path / "serve.log"
    with serve(home, output, PENGUINS_WORKERS=str(workers), PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        bentoml.SyncHTTPClient(url)  # waits until ready
        stop, latencies, errors = threading.Event(), [], []
        clients = [threading.Thread(target=_client_loop, args=(url, stop, latencies, errors)) for _ in range(8)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(2)
            before = len(latencies)
            run_train(home, "--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "extra-trees")
            run_train(home, *MLP)
            _save_without_the_gate(home)
            shutil.rmtree(home / "models" / model_name("knn"))
            during_from = len(latencies)
            reloaded = time.perf_counter()
            report = httpx.post(f"{url}/reload", headers=AUTH, timeout=120).json()
            reload_call = time.perf_counter() - reloaded
            assert report["routes_added"] == ["/classify_extra_trees", "/classify_mlp"], report
            assert report["routes_removed"] == ["/classify_knn"], report
            (skipped,) = report["skipped"]
            assert skipped["name"] == model_name("decision-tree") and "train_and_save" in skipped["fix"]
            # Every worker answers the new routes (fresh connections spread over them).
            route_answered = None
            for _ in range(20 * workers):
                with httpx.Client(base_url=url, timeout=60) as fresh:
                    for route in report["routes_added"]:
                        answer = fresh.post(route, json=BODY)
                        assert answer.status_code == 200, answer.text
                        route_answered = route_answered or time.perf_counter() - reloaded
            time.sleep(2)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
        during = latencies[during_from:]
        assert not errors, errors[:5]
        assert before > 0 and len(during) > 0

        # The new models are methods of a newly made client, in the OpenAPI document, in explain and in the listing.
        client = bentoml.SyncHTTPClient(url)
        paths = httpx.get(f"{url}/docs.json").json()["paths"]
        for name, method in (("extra-trees", client.classify_extra_trees), ("mlp", client.classify_mlp)):
            (typed,) = method(penguins=[EXAMPLE_PENGUIN])
            assert typed["model"].startswith(model_name(name) + ":") and typed["species"] == "Gentoo"
            assert route_of(model_name(name)) in paths
            explained = client.explain(penguin=EXAMPLE_PENGUIN, model=name)
            assert explained["prediction"]["model"] == typed["model"]
        assert not hasattr(client, "classify_knn") and "/classify_knn" not in paths
        listed = {m["name"]: m["route"] for m in client.models()["models"]}
        assert listed == {
            model_name("logistic-regression"): "/classify_logistic_regression",
            model_name("extra-trees"): "/classify_extra_trees",
            model_name("mlp"): "/classify_mlp",
        }
        # The removed model's route answers a JSON 404 naming the served models.
        gone = httpx.post(f"{url}/classify_knn", json=BODY)
        assert gone.status_code == 404 and gone.headers["content-type"] == "application/json"
        assert gone.json()["allowed"] == [model_name(n) for n in ("extra-trees", "logistic-regression", "mlp")]
        # The model saved without the gate is a 404 that says why, and the call that would serve it.
        plain = httpx.post(f"{url}/classify_decision_tree", json=BODY)
        assert plain.status_code == 404 and plain.json()["fix"] == skipped["fix"], plain.text
        assert plain.json()["error"] == f"model 'decision-tree' is not served: {skipped['reason']}"
    if workers == 2:
        for route in ("/classify_extra_trees", "/classify_mlp"):
            assert workers_that_answered(output.read_text(), route) == {"1", "2"}
    figures[f"routes follow the store ({workers} worker{'s' if workers > 1 else ''})"] = {
        "requests_during_change": len(during),
        "failed": len(errors),
        "p99_ms_before": round(_p99(latencies[:before]) * 1000, 1),
        "p99_ms_during": round(_p99(during) * 1000, 1),
        "reload_call_s": round(reload_call, 3),
        "reload_to_new_route_answering_s": round(route_answered, 3),
    }
