"""Integration: a real `bentoml serve` on a free port, driven with BentoML's own client, from an empty store."""

from __future__ import annotations

import bentoml
import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.store import model_name
from tests.servers import run_train, serve, workers_that_answered

pytestmark = pytest.mark.integration


def test_empty_store_to_serving_to_retrained(tmp_path):
    home = tmp_path / "home"
    with serve(home, tmp_path / "serve.log") as url:
        # Empty store: alive, not ready, and classify says what to do.
        assert httpx.get(f"{url}/livez").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        response = httpx.post(f"{url}/classify", json={"penguins": [EXAMPLE_PENGUIN]})
        assert response.status_code == 503 and "train" in response.json()["error"]
        response = httpx.post(f"{url}/classify_random_forest", json={"penguins": [EXAMPLE_PENGUIN]})
        assert response.status_code == 503 and "reload" in response.json()["error"]

        client = bentoml.SyncHTTPClient(url, server_ready_timeout=0)
        with pytest.raises(bentoml.exceptions.BentoMLException):
            client.classify(penguins=[EXAMPLE_PENGUIN])

        run_train(home, "--models", "logistic-regression", "random-forest")
        report = client.reload()
        assert sorted(tag.split(":")[0] for tag in report["added"]) == [
            model_name("logistic-regression"),
            model_name("random-forest"),
        ]
        assert httpx.get(f"{url}/readyz").status_code == 200
        first_rf = next(t for t in report["added"] if t.startswith(model_name("random-forest")))

        (typed,) = client.classify_random_forest(penguins=[EXAMPLE_PENGUIN])
        assert typed["species"] == "Gentoo" and typed["model"] == first_rf
        (generic,) = client.classify(penguins=[EXAMPLE_PENGUIN], model="random-forest")
        assert generic["model"] == first_rf
        (default,) = client.classify(penguins=[EXAMPLE_PENGUIN])
        assert default["model"] in report["serving"]

        # A new version under an existing name is served after reload (forced past the promotion gate: seed 7's
        # held-out accuracy is lower than seed 42's; the gate has its own tests).
        run_train(home, "--models", "random-forest", "--seed", "7", "--no-gate")
        report = client.reload()
        (update,) = report["updated"]
        assert update["from"] == first_rf and update["to"] != first_rf
        assert client.classify_random_forest(penguins=[EXAMPLE_PENGUIN])[0]["model"] == update["to"]

        # A model first saved after start-up is served by the generic endpoint at once.
        run_train(home, "--models", "knn")
        assert [t.split(":")[0] for t in client.reload()["added"]] == [model_name("knn")]
        assert client.classify(penguins=[EXAMPLE_PENGUIN], model="knn")[0]["model"].startswith(model_name("knn"))

        with pytest.raises(bentoml.exceptions.NotFound):
            client.classify(penguins=[EXAMPLE_PENGUIN], model="no-such-model")
        with pytest.raises(bentoml.exceptions.BentoMLException) as bad:
            client.classify_random_forest(penguins=[{**EXAMPLE_PENGUIN, "island": "Atlantis"}])
        assert bad.value.error_code == 400 and "Biscoe" in str(bad.value)

        listing = client.models()
        assert {m["name"] for m in listing["models"]} == {
            model_name(a) for a in ("logistic-regression", "random-forest", "knn")
        }


def test_one_reload_reaches_every_worker(tmp_path):
    home = tmp_path / "home"
    run_train(home, "--models", "logistic-regression")
    with serve(home, tmp_path / "serve.log", PENGUINS_WORKERS="2") as url:
        client = bentoml.SyncHTTPClient(url)
        first = client.classify_logistic_regression(penguins=[EXAMPLE_PENGUIN])[0]["model"]
        run_train(home, "--models", "logistic-regression", "--seed", "11")
        (update,) = client.reload()["updated"]
        assert update["from"] == first
        # Fresh connections spread over both workers; every answer must come from the new version.
        answers = set()
        for _ in range(40):
            with httpx.Client() as fresh:
                response = fresh.post(f"{url}/classify_logistic_regression", json={"penguins": [EXAMPLE_PENGUIN]})
                answers.add(response.json()[0]["model"])
        assert answers == {update["to"]}
        served = {m["tag"] for _ in range(10) for m in httpx.Client().post(f"{url}/models").json()["models"]}
        assert served == {update["to"]}
    # The test means something only if both workers answered classify after the reload.
    workers = workers_that_answered((tmp_path / "serve.log").read_text(), "/classify_logistic_regression")
    assert workers == {"1", "2"}, workers
