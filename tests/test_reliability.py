"""Reliability of a real `bentoml serve`: classification never fails while new versions are saved and reloaded, and a
damaged store is reported while the healthy models keep serving. The figures land in the run's summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter

import bentoml
import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import endpoint_name, model_name
from penguins.scan import STORE_FAILURE, scan
from tests.harness import ROOT, crash, run_train, serve, version_dir, workers_that_answered

pytestmark = pytest.mark.integration

TOKEN = "reliability-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALGORITHMS = ("logistic-regression", "random-forest")
BODY = {"penguins": [EXAMPLE_PENGUIN]}

# Saves new versions from another process, as a notebook or train.py would, while the server is busy.
SAVER = """
import sys
from penguins.data import load_penguins
from penguins.gate import save_gated
from penguins.training import train
frame = load_penguins()
for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    for algorithm in sys.argv[3:]:  # gate=False: every version is served, as train.py --no-gate
        print(save_gated(train(algorithm, frame, seed=seed), gate=False)[0], flush=True)
"""


def _requests(url: str, stop: threading.Event, answers: list, errors: list) -> None:
    """One closed-loop client: typed and generic routes in turn, a fresh connection every 20 requests so that both
    workers get traffic."""
    routes = [(f"/{endpoint_name(a)}", {}, model_name(a)) for a in ALGORITHMS]
    routes += [("/classify", {"model": a}, model_name(a)) for a in ALGORITHMS]
    sent = 0
    while not stop.is_set():
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(20):
                path, extra, expected = routes[sent % len(routes)]
                sent += 1
                try:
                    response = http.post(path, json={**BODY, **extra})
                except httpx.HTTPError as error:
                    errors.append(f"{path}: {error!r}")
                    continue
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code} {response.text[:200]}")
                else:
                    answers.append((expected, response.json()[0]["model"]))


def _reloads(url: str, stop: threading.Event, reports: list, errors: list) -> None:
    while not stop.is_set():
        response = httpx.post(f"{url}/reload", headers=AUTH, timeout=120)
        if response.status_code != 200:
            errors.append(f"/reload: {response.status_code} {response.text[:200]}")
        else:
            reports.append(response.json())
        time.sleep(0.2)


def test_reload_under_load_loses_no_request(tmp_path, figures):
    home = tmp_path / "home"
    run_train(home, "--models", *ALGORITHMS)
    valid = {m.tag for m in scan(home / "models")[0]}
    output = tmp_path / "serve.log"
    with serve(home, output, PENGUINS_WORKERS="2", PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        stop = threading.Event()
        answers: list[tuple[str, str]] = []
        errors: list[str] = []
        reports: list[dict] = []
        threads = [threading.Thread(target=_requests, args=(url, stop, answers, errors)) for _ in range(6)]
        threads.append(threading.Thread(target=_reloads, args=(url, stop, reports, errors)))
        for thread in threads:
            thread.start()
        try:
            saver = subprocess.run(
                [sys.executable, "-c", SAVER, "1", "3", *ALGORITHMS],
                cwd=ROOT,
                env={**os.environ, "BENTOML_HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            time.sleep(1)  # a little more traffic on the last versions
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        saved = saver.stdout.split()
        valid |= set(saved)
        newest = {tag.split(":")[0]: tag for tag in saved}  # saved in order: the last of each name is the newest

        final = httpx.post(f"{url}/reload", headers=AUTH, timeout=120).json()
        assert set(final["serving"]) == set(newest.values()), final
        offset = output.stat().st_size
        # Every worker serves the newest versions after the last reload; fresh connections reach both.
        after = Counter()
        for _ in range(40):
            with httpx.Client(base_url=url, timeout=30) as fresh:
                for algorithm in ALGORITHMS:
                    response = fresh.post(f"/{endpoint_name(algorithm)}", json=BODY)
                    assert response.status_code == 200, response.text
                    after[response.json()[0]["model"]] += 1
        assert set(after) == set(newest.values()), after

    assert errors == [], errors[:10]
    assert len(answers) > 200, "the clients hardly ran: the test would prove nothing"
    assert {tag for _, tag in answers} <= valid
    assert all(tag.startswith(f"{expected}:") for expected, tag in answers)
    assert len({tag for _, tag in answers}) > len(ALGORITHMS), "no answer came from a version saved under load"
    assert workers_that_answered(output.read_text()[offset:], f"/{endpoint_name(ALGORITHMS[0])}") == {"1", "2"}
    figures["reload under load"] = {
        "requests": len(answers) + len(errors),
        "failed": len(errors),
        "reloads": len(reports) + 1,
        "versions saved under load": len(saved),
        "versions that answered": len({tag for _, tag in answers}),
        "workers": 2,
    }


def test_store_faults_are_reported_while_the_healthy_models_serve(tmp_path, store_dir, figures):
    home = tmp_path / "home"
    store = home / "models"
    shutil.copytree(store_dir, store)
    with serve(home, tmp_path / "serve.log", PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        client = bentoml.SyncHTTPClient(url, token=TOKEN)
        before = {m["name"]: m["tag"] for m in client.models()["models"]}
        assert len(before) == 5

        # Clutter that file browsers, Jupyter and filesystems leave behind.
        (store / ".ipynb_checkpoints").mkdir()
        (store / "lost+found").mkdir()
        (store / model_name("svm") / ".ipynb_checkpoints").mkdir()
        # A half-written new version: `latest` names a folder whose model.yaml is not written yet.
        knn = store / model_name("knn")
        (knn / "halfwritten").mkdir()
        (knn / "latest").write_text("halfwritten")
        # A complete-looking new version whose pickle is corrupt.
        good = version_dir(store, "svm")
        corrupt = good.with_name("corruptpickle")
        shutil.copytree(good, corrupt)
        (corrupt / "model.yaml").write_text((corrupt / "model.yaml").read_text().replace(good.name, corrupt.name))
        (corrupt / "saved_model.pkl").write_bytes(b"\x80\x05 this is not a pickle")
        (store / model_name("svm") / "latest").write_text(corrupt.name)

        report = client.reload()
        failed = {f["name"]: f for f in report["failed"]}
        assert set(failed) == {model_name("knn"), model_name("svm")}, report
        assert failed[model_name("knn")]["tag"] == f"{model_name('knn')}:halfwritten"
        assert "model.yaml" in failed[model_name("knn")]["reason"]
        assert "cannot unpickle" in failed[model_name("svm")]["reason"]
        # The broken new versions did not take the working ones down: every model still answers on its old tag.
        listing = client.models()
        assert {m["name"]: m["tag"] for m in listing["models"]} == before
        assert {f["name"] for f in listing["failures"]} == set(failed)
        for name, tag in before.items():
            answer = client.classify(penguins=[EXAMPLE_PENGUIN], model=name)
            assert answer[0]["model"] == tag

        # The store disappears (an unmounted volume) and comes back.
        shutil.rmtree(corrupt)
        (store / model_name("svm") / "latest").write_text(good.name)
        shutil.rmtree(knn / "halfwritten")
        (knn / "latest").write_text(before[model_name("knn")].split(":")[1])
        away = home / "models-away"
        store.rename(away)
        report = client.reload()
        assert [f["name"] for f in report["failed"]] == [STORE_FAILURE]
        assert set(report["serving"]) == set(before.values())
        assert client.classify(penguins=[EXAMPLE_PENGUIN])[0]["species"] == "Gentoo"
        assert httpx.get(f"{url}/readyz").status_code == 200
        away.rename(store)
        report = client.reload()
        assert report["failed"] == [] and set(report["serving"]) == set(before.values())
        assert client.models()["failures"] == []

    figures["store faults"] = {
        "injected": 6,  # 3 clutter folders, a half-written version, a corrupt pickle, a vanished store
        "healthy models kept serving": len(before),
    }


def test_prediction_log_keeps_every_answer_through_a_crash(tmp_path, store_dir, figures):
    """Two workers, concurrent clients, then SIGKILL: every answered prediction is one whole JSON line; the admin
    token appears nowhere; CORS answers only the configured origin."""
    home = tmp_path / "home"
    shutil.copytree(store_dir, home / "models")
    logs = tmp_path / "prediction-logs"
    allowed = "http://notebooks.example"
    env = {"PENGUINS_WORKERS": "2", "PENGUINS_ADMIN_TOKEN": TOKEN, "PENGUINS_CORS_ORIGINS": json.dumps([allowed])}
    answered: dict[str, str] = {}  # request id -> route
    with serve(home, tmp_path / "serve.log", PENGUINS_LOG_DIR=str(logs), **env) as url:

        def client(index: int) -> None:
            routes = ["/classify", f"/{endpoint_name('random-forest')}", f"/{endpoint_name('knn')}"]
            for n in range(60):
                with httpx.Client(base_url=url, timeout=60) as http:  # fresh connections reach both workers
                    route = routes[n % len(routes)]
                    response = http.post(route, json=BODY, headers={"x-request-id": f"c{index}-{n}"})
                    assert response.status_code == 200, response.text
                    answered[response.headers["x-request-id"]] = route

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert httpx.post(f"{url}/reload", headers=AUTH).status_code == 200
        assert httpx.post(f"{url}/reload").status_code == 401

        # What a browser page on the allowed origin sends before its JSON POST.
        preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        yes = httpx.options(f"{url}/classify", headers={"origin": allowed, **preflight})
        no = httpx.options(f"{url}/classify", headers={"origin": "http://elsewhere.example", **preflight})
        assert yes.status_code == 200, yes.text
        assert yes.headers.get("access-control-allow-origin") == allowed
        assert "POST" in yes.headers["access-control-allow-methods"]
        simple = httpx.post(f"{url}/classify", json=BODY, headers={"origin": allowed, "x-request-id": "cors"})
        assert simple.headers.get("access-control-allow-origin") == allowed
        answered["cors"] = "/classify"  # logged like any answer; the preflights are not
        assert "access-control-allow-origin" not in no.headers

        crash(url.process)  # the server and its workers at once: no shutdown, no flush at exit

    files = sorted(logs.glob("predictions-*.jsonl*"))
    assert len({f.name.split(".")[0] for f in files}) == 2, files  # one file per worker
    lines = [line for f in files for line in f.read_text().splitlines()]
    records = [json.loads(line) for line in lines]  # every line whole
    by_id = {r["request_id"]: r for r in records}
    assert len(records) == len(by_id) == len(answered)
    assert set(by_id) == set(answered)
    for request_id, route in answered.items():
        record = by_id[request_id]
        assert record["route"] == route and record["model"].startswith("penguins-")
        # the validated input: what was sent, with the defaults filled in (/classify's "model": null)
        assert record["input"]["penguins"] == BODY["penguins"] and record["output"][0]["species"] == "Gentoo"
    everything = (tmp_path / "serve.log").read_text() + "".join(f.read_text() for f in files)
    assert TOKEN not in everything
    figures["prediction log through a crash"] = {
        "answered": len(answered),
        "logged": len(records),
        "torn lines": 0,
        "workers": 2,
    }
