"""Bad input gets a clear 4xx with a JSON body, never a 5xx; state-changing routes need the admin token."""

import json

import pytest

from penguins.settings import Settings

HAND_WRITTEN = {
    "wrong type": {
        "penguins": [
            {"island": 3, "bill_length_mm": "x", "bill_depth_mm": [], "flipper_length_mm": {}, "body_mass_g": True}
        ]
    },
    "penguins not a list": {"penguins": {"island": "Dream"}},
    "NaN": '{"penguins": [{"island": "Dream", "bill_length_mm": NaN, "bill_depth_mm": 17, "flipper_length_mm": 190, '
    '"body_mass_g": 3500}]}',
    "Infinity": '{"penguins": [{"island": "Dream", "bill_length_mm": 40, "bill_depth_mm": Infinity, '
    '"flipper_length_mm": 190, "body_mass_g": 3500}]}',
    "negative": {
        "penguins": [
            {
                "island": "Dream",
                "bill_length_mm": -40,
                "bill_depth_mm": 17,
                "flipper_length_mm": 190,
                "body_mass_g": 3500,
            }
        ]
    },
    "absurd": {
        "penguins": [
            {
                "island": "Dream",
                "bill_length_mm": 40,
                "bill_depth_mm": 17,
                "flipper_length_mm": 190,
                "body_mass_g": 1e300,
            }
        ]
    },
    "empty list": {"penguins": []},
    "unknown island": {
        "penguins": [
            {
                "island": "Atlantis",
                "bill_length_mm": 40,
                "bill_depth_mm": 17,
                "flipper_length_mm": 190,
                "body_mass_g": 3500,
            }
        ]
    },
    "missing fields": {"penguins": [{"island": "Dream"}]},
    "extra fields": {
        "penguins": [
            {
                "island": "Dream",
                "bill_length_mm": 40,
                "bill_depth_mm": 17,
                "flipper_length_mm": 190,
                "body_mass_g": 3500,
                "colour": "blue",
            }
        ]
    },
    "extra top-level field": {"penguins": [], "debug": True},
    "no body": "",
    "malformed JSON": '{"penguins": [{"island": "Dream",',
    "not JSON at all": "island=Dream",
    "JSON null": "null",
    "model of wrong type": {"penguins": [], "model": 5},
}


@pytest.mark.parametrize("route", ["/classify", "/classify_random_forest"])
@pytest.mark.parametrize("case", sorted(HAND_WRITTEN))
def test_hand_written_bad_requests_are_4xx_with_a_json_body(client, route, case):
    body = HAND_WRITTEN[case]
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(route, content=content, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    assert response.json()  # JSON, not a traceback


def test_a_body_that_is_not_json_is_415(client, example):
    response = client.post(
        "/classify", content=json.dumps({"penguins": [example]}), headers={"content-type": "text/plain"}
    )
    # Refused before BentoML sees it (BentoML alone would fall back to JSON, or unpickle the body): JSON or nothing.
    refusal = {
        "error": "the request body must be JSON (Content-Type: application/json)",
        "accepted": ["application/json"],
    }
    assert (response.status_code, response.json()) == (415, refusal)
    pickle = client.post("/classify", content=b"\x80\x04", headers={"content-type": "application/vnd.bentoml+pickle"})
    assert (pickle.status_code, pickle.json()) == (415, refusal)


def test_a_body_over_the_limit_is_refused_before_it_is_read(client, example):
    from penguins.settings import get_settings

    limit = get_settings().max_body_bytes
    huge = b'{"penguins": [' + b" " * (limit + 1) + b"]}"
    response = client.post("/classify", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["limit_bytes"] == limit

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"penguins": ['
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.fixture
def guarded(client):
    """The in-process service with an admin token configured on its gateway (one ASGI app per process: BentoML
    registers its metrics globally), restored afterwards."""
    from penguins.gateway import Gateway

    node = client.app.middleware_stack
    while not isinstance(node, Gateway):
        node = node.app
    original = node.settings, node.token
    node.settings, node.token = Settings(admin_token="s3cret-token"), b"s3cret-token"
    yield client
    node.settings, node.token = original


def test_reload_needs_the_token_when_one_is_configured(guarded, example):
    assert guarded.post("/reload").status_code == 401
    assert guarded.post("/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert guarded.post("/reload", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    # classify and the docs stay open
    assert guarded.post("/classify", json={"penguins": [example]}).status_code == 200
    assert guarded.get("/docs.json").status_code == 200


def test_cors_is_off_by_default(client, example):
    response = client.options(
        "/classify", headers={"origin": "http://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers
