"""In-process service tests (the fast inner loop): BentoML's ASGI app over the session's store."""

import json

import pytest

from penguins.contract import BOUNDS, SPECIES
from penguins.names import MODEL_ROUTE_PREFIX, check_model_name, endpoint_name, model_name, route_of
from penguins.training import ALGORITHMS
from tests.openapi import request_schema


def _post(client, route, **body):
    return client.post(route, json=body)


def test_each_algorithm_has_a_typed_endpoint_in_the_openapi_docs(client):
    paths = client.get("/docs.json").json()["paths"]
    for algorithm in ALGORITHMS:
        assert f"/{endpoint_name(algorithm)}" in paths
    assert {"/classify", "/models", "/reload"} <= set(paths)


def test_no_model_name_can_take_a_built_in_route(client, svc):
    """A model's route is `/classify_<name>` for a name `check_model_name` accepts (what `--name` and
    `train_and_save` check first); no route or method the service has besides them is of that shape."""

    def a_model_could_take(path: str) -> bool:
        if not path.startswith(MODEL_ROUTE_PREFIX):
            return False
        try:
            check_model_name(path.removeprefix(MODEL_ROUTE_PREFIX).replace("_", "-"))
        except ValueError:
            return False
        return True

    per_model = {route_of(model_name(algorithm)) for algorithm in ALGORITHMS}
    built_in = set(client.get("/docs.json").json()["paths"]) - per_model
    built_in |= {"/", "/ui", "/docs.json", "/schema.json", "/livez", "/readyz", "/metrics"}
    built_in |= {"/" + name for name in svc.apis} - per_model
    assert {"/classify", "/explain", "/models", "/reload"} <= built_in
    assert not [path for path in built_in if a_model_could_take(path)]
    assert all(a_model_could_take(route) for route in per_model)


def test_the_documented_example_is_a_working_request(client):
    schema = client.get("/docs.json").json()
    example = schema["components"]["schemas"]["Penguin"]["example"]
    response = _post(client, "/classify", penguins=[example])
    assert response.status_code == 200, response.text
    assert response.json()[0]["species"] == "Gentoo"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_typed_endpoint_answers_with_its_own_model(client, trained, example, algorithm):
    response = _post(client, f"/{endpoint_name(algorithm)}", penguins=[example, {**example, "island": "dream"}])
    assert response.status_code == 200, response.text
    predictions = response.json()
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction["model"] == trained[algorithm][1]
        assert set(prediction["probabilities"]) == set(SPECIES)
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
        assert prediction["species"] in SPECIES


def test_generic_classify_defaults_to_the_best_cv_model(client, trained, example):
    best = max(trained.values(), key=lambda mt: (mt[0].metrics["cv_accuracy_mean"], mt[0].name))
    assert _post(client, "/classify", penguins=[example]).json()[0]["model"] == best[1]
    listing = _post(client, "/models").json()
    assert listing["default"] == best[1]


@pytest.mark.parametrize("spelling", ["penguins-knn", "knn"])
def test_generic_classify_takes_a_model_name_or_algorithm(client, trained, example, spelling):
    response = _post(client, "/classify", penguins=[example], model=spelling)
    assert response.json()[0]["model"] == trained["knn"][1]


def test_unknown_model_is_404_listing_the_available_names(client, example):
    response = _post(client, "/classify", penguins=[example], model="penguins-deep-forest")
    assert response.status_code == 404
    body = response.json()
    assert body["field"] == "model" and model_name("svm") in body["allowed"]


@pytest.mark.parametrize(
    ("change", "location", "words"),
    [
        ({"island": "Atlantis"}, ["penguins", 0, "island"], "'Biscoe', 'Dream' or 'Torgersen'"),
        ({"sex": "x"}, ["penguins", 0, "sex"], "'female' or 'male'"),
        ({"body_mass_g": -5}, ["penguins", 0, "body_mass_g"], "at least 900 g"),
        ({"bill_length_mm": "long"}, ["penguins", 0, "bill_length_mm"], "number"),
        ({"wings": 2}, ["penguins", 0, "wings"], "Unknown field 'wings'"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_allowed_values(client, example, change, location, words):
    response = _post(client, "/classify_random_forest", penguins=[{**example, **change}])
    assert response.status_code == 400
    (detail,) = response.json()["detail"]
    assert detail["loc"] == location and words in detail["msg"]


def test_empty_and_oversized_lists_are_refused(client, example):
    assert _post(client, "/classify", penguins=[]).status_code == 400
    from penguins.settings import get_settings

    limit = get_settings().max_penguins
    response = _post(client, "/classify", penguins=[example] * (limit + 1))
    assert response.status_code == 400
    assert "at most" in response.json()["detail"][0]["msg"]


def test_models_lists_metrics_routes_and_training_time(client, trained):
    listing = _post(client, "/models").json()
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {model_name(a) for a in ALGORITHMS}
    rf = by_name[model_name("random-forest")]
    assert rf["route"] == "/classify_random_forest" and rf["predictor"] == "onnx" and rf["trained_at"]
    assert rf["metrics"]["test_accuracy"] >= 0.95 and len(rf["metrics"]["confusion_matrix"]) == 3
    assert listing["failures"] == []


def test_reload_without_changes_reports_nothing_changed(client, trained):
    report = _post(client, "/reload").json()
    assert report["added"] == report["updated"] == report["removed"] == report["failed"] == []
    assert sorted(report["serving"]) == sorted(tag for _, tag in trained.values())


def test_health_is_bentomls_own_and_the_http_metrics_ours_by_route(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.post("/classify_no_such_model", json={}).status_code == 404
    text = client.get("/metrics").text
    assert 'penguins_http_requests_total{endpoint="/readyz",http_response_code="200"}' in text
    assert 'endpoint="<unmatched>"' in text or 'endpoint="/classify_no_such_model"' not in text
    assert "bentoml_service_request" not in text  # BentoML's own, labelled by raw path, are off


def test_generic_classify_output_keeps_the_contract_for_a_bulk_request(client, frame):
    from pydantic import TypeAdapter

    from penguins.contract import FEATURES, Prediction

    rows = frame[list(FEATURES)].dropna().sample(n=2000, replace=True, random_state=1)
    response = _post(client, "/classify", penguins=rows.to_dict("records"), model="random-forest")
    assert response.status_code == 200
    predictions = TypeAdapter(list[Prediction]).validate_python(response.json())
    assert len(predictions) == 2000 and {p.species for p in predictions} == set(SPECIES)


def test_openapi_document_speaks_openapi_3_0(client):
    """The document says 3.0; what requests are built from must not use the 2020-12 spellings 3.0 tools reject."""
    document = client.get("/docs.json").json()
    assert document["openapi"].startswith("3.0")
    requests = json.dumps([document["paths"], document["components"]["schemas"]["Penguin"]])
    assert '{"type": "null"}' not in requests and '"exclusiveMinimum": 0' not in requests
    penguin = document["components"]["schemas"]["Penguin"]["properties"]
    assert penguin["bill_length_mm"]["minimum"] == 10 and "exclusiveMinimum" not in penguin["bill_length_mm"]
    assert penguin["sex"]["nullable"] is True and penguin["sex"]["enum"] == ["female", "male", None]
    classify = request_schema(document, "/classify")
    assert classify["properties"]["model"]["nullable"] is True


def _columns(rows: list[dict]) -> dict[str, list]:
    from penguins.contract import FEATURES

    return {feature: [row.get(feature) for row in rows] for feature in FEATURES}


@pytest.mark.parametrize("route", ["/classify", "/classify_random_forest", "/classify_svm"])
def test_a_columnar_request_gets_the_answers_of_the_same_rows(client, frame, route):
    from penguins.contract import FEATURES

    sample = frame[list(FEATURES)].sample(n=500, replace=True, random_state=3)  # with penguins of unknown sex
    rows = [{k: v for k, v in row.items() if v == v and v is not None} for row in sample.to_dict("records")]
    by_rows = _post(client, route, penguins=rows)
    by_columns = _post(client, route, penguins=_columns(rows))
    assert by_rows.status_code == by_columns.status_code == 200, by_columns.text
    assert by_columns.json() == by_rows.json()
    known = [row for row in rows if "sex" in row]
    without_sex = {k: v for k, v in _columns(known).items() if k != "sex"}  # `sex` left out: every one unknown
    unknown = [{k: v for k, v in row.items() if k != "sex"} for row in known]
    assert _post(client, route, penguins=without_sex).json() == _post(client, route, penguins=unknown).json()


@pytest.mark.parametrize(
    ("change", "location", "words"),
    [
        ({"island": "Atlantis"}, ["penguins", "island", 1], "'Biscoe', 'Dream' or 'Torgersen'"),
        ({"sex": "x"}, ["penguins", "sex", 1], "'female' or 'male'"),
        ({"body_mass_g": -5}, ["penguins", "body_mass_g", 1], "at least 900 g"),
        ({"bill_length_mm": "long"}, ["penguins", "bill_length_mm", 1], "number"),
    ],
)
def test_a_columnar_request_is_checked_with_the_rules_of_rows(client, example, change, location, words):
    rows = [example, {**example, **change}]
    by_rows = _post(client, "/classify_random_forest", penguins=rows)
    response = _post(client, "/classify_random_forest", penguins=_columns(rows))
    assert response.status_code == by_rows.status_code == 400
    (detail,) = response.json()["detail"]
    assert detail["loc"] == location and words in detail["msg"]
    assert detail["msg"] == by_rows.json()["detail"][0]["msg"]  # the same rule says the same


def test_a_columnar_request_must_be_whole(client, example):
    from penguins.settings import get_settings

    columns = _columns([example, example])
    assert _post(client, "/classify", penguins={**columns, "wings": [2, 2]}).json()["detail"][0]["loc"] == [
        "penguins",
        "wings",
    ]
    ragged = _post(client, "/classify", penguins={**columns, "body_mass_g": [4500.0]})
    assert ragged.status_code == 400 and "one value per penguin" in ragged.json()["detail"][0]["msg"]
    assert _post(client, "/classify", penguins={k: [] for k in columns}).status_code == 400
    missing = _post(client, "/classify", penguins={k: v for k, v in columns.items() if k != "island"})
    assert missing.status_code == 400 and missing.json()["detail"][0]["loc"] == ["penguins", "island"]
    too_many = _columns([example] * (get_settings().max_penguins + 1))
    response = _post(client, "/classify_random_forest", penguins=too_many)
    assert response.status_code == 400 and "1 to" in response.json()["detail"][0]["msg"]


def test_the_openapi_document_offers_rows_or_columns(client):
    document = client.get("/docs.json").json()
    schemas = document["components"]["schemas"]
    for route in ("/classify", "/classify_random_forest"):
        body = request_schema(document, route)
        options = body["properties"]["penguins"]["anyOf"]
        assert {"$ref": "#/components/schemas/PenguinColumns"} in options
        assert {"$ref": "#/components/schemas/Penguin"} in [o.get("items") for o in options]
    columns = schemas["PenguinColumns"]
    assert columns["additionalProperties"] is False and set(columns["required"]) == set(schemas["Penguin"]["required"])
    assert columns["properties"]["bill_length_mm"]["items"]["minimum"] == BOUNDS["bill_length_mm"][0]
    assert columns["properties"]["sex"]["items"]["nullable"] is True
    assert _post(client, "/classify", penguins=columns["example"]).status_code == 200
