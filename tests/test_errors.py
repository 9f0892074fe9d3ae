"""Errors that say what to send: the 400's headline is the first problem in words with where it is, and the likeliest
first mistakes (a bare penguin, a list without its wrapper) get their one fix. In process, and once against a real
`bentoml serve` with BentoML's own client."""

from __future__ import annotations

import shutil

import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.http.hints import where
from tests.harness import serve

BAD_MASS = {**EXAMPLE_PENGUIN, "body_mass_g": 4.5}


def test_a_location_reads_as_a_path():
    assert where(["penguins", 0, "body_mass_g"]) == "penguins[0].body_mass_g"
    assert where(["penguins", "island", 1]) == "penguins.island[1]"
    assert where([]) == "body"


@pytest.mark.inprocess
@pytest.mark.parametrize("route", ["/classify", "/classify_random_forest"])
def test_a_bare_penguin_is_told_to_wrap_it(client, route):
    answer = client.post(route, json=EXAMPLE_PENGUIN)
    assert answer.status_code == 400
    (detail,) = answer.json()["detail"]  # one fix, not "penguins missing" and six unknown fields
    assert detail["loc"] == ["penguins"] and '{"penguins": [{' in detail["msg"]
    assert answer.json()["error"].startswith("penguins: ") and '{"penguins": [{' in answer.json()["error"]


@pytest.mark.inprocess
def test_a_list_without_the_wrapper_is_told_to_wrap_it(client):
    answer = client.post("/classify", json=[EXAMPLE_PENGUIN])
    (detail,) = answer.json()["detail"]
    assert answer.status_code == 400 and detail["loc"] == [] and '{"penguins": [{' in detail["msg"]


@pytest.mark.inprocess
def test_a_bare_penguin_to_explain_is_told_its_own_wrapper(client):
    answer = client.post("/explain", json=EXAMPLE_PENGUIN)
    (detail,) = answer.json()["detail"]
    assert answer.status_code == 400 and detail["loc"] == ["penguin"] and '{"penguin": {' in detail["msg"]


@pytest.mark.inprocess
def test_the_headline_is_the_first_problem_with_its_place(client):
    answer = client.post("/classify", json={"penguins": [EXAMPLE_PENGUIN, BAD_MASS]}).json()
    assert answer["error"].startswith("penguins[1].body_mass_g: at least 900 g")
    assert "validation error" not in answer["error"]
    columns = {k: [v, v] for k, v in {**EXAMPLE_PENGUIN, "island": "Atlantis"}.items()}
    answer = client.post("/classify", json={"penguins": columns}).json()
    assert answer["error"].startswith("penguins.island[0]: ")
    two = client.post("/classify", json={"penguins": [BAD_MASS, BAD_MASS]}).json()
    assert two["error"].endswith("(and 1 more: see detail)") and len(two["detail"]) == 2


@pytest.mark.integration
def test_a_real_server_and_bentomls_client_say_what_to_send(tmp_path, store_dir):
    import bentoml

    home = tmp_path / "home"
    shutil.copytree(store_dir, home / "models")
    with serve(home, tmp_path / "serve.log") as url, bentoml.SyncHTTPClient(url) as client:
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.classify(penguins=[BAD_MASS])
        assert "penguins[0].body_mass_g: at least 900 g" in str(refused.value)
        import httpx

        answer = httpx.post(f"{url}/classify_svm", json=EXAMPLE_PENGUIN, timeout=30)
        assert answer.status_code == 400 and '{"penguins": [{' in answer.json()["error"]


@pytest.mark.inprocess
@pytest.mark.parametrize("route", ["/models", "/reload"])
def test_a_non_json_type_declared_without_a_body_is_415_not_500(client, route):
    # schemathesis' ST102: BentoML parsed multipart/form-data without a boundary and answered 500.
    answer = client.post(route, headers={"content-type": "multipart/form-data"})
    assert answer.status_code == 415 and answer.json()["accepted"]
    assert client.post(route).status_code == 200  # no type and no body: fine


@pytest.mark.inprocess
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "TRACE"])
def test_metrics_answers_other_methods_405_with_allow(client, method):
    answer = client.request(method, "/metrics")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD"
    assert answer.json() == {"error": f"{method} is not allowed on /metrics", "allowed": ["GET", "HEAD"]}
