"""No 5xx on any input, against a real `bentoml serve`: schemathesis generates requests from the server's own OpenAPI
document (valid and invalid ones) for every operation, and the hand-written bad requests are replayed over HTTP."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.servers import serve
from tests.test_bad_input import HAND_WRITTEN

pytestmark = pytest.mark.integration

TOKEN = "fuzz-test-token"
EXAMPLES_PER_OPERATION = 100
CASES: Counter[tuple[str, str]] = Counter()  # (mode, operation) -> requests sent


@pytest.fixture(scope="module")
def server(tmp_path_factory, store_dir):
    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(store_dir, home / "models")
    with serve(home, home.parent / "serve.log", PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server}/docs.json")


def _assert_clean(response) -> None:
    """No server error; a refusal is JSON that says what was wrong."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or ""
        if isinstance(content_type, list):  # schemathesis keeps every value of a header
            content_type = ",".join(content_type)
        assert content_type.startswith("application/json"), (response.status_code, response.headers)
        body = json.loads(response.content)
        assert body, response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_generated_requests_never_get_a_5xx(api_schema, mode):
    # One Hypothesis run per operation (schemathesis' own pytest plugin does not run on pytest 9 yet).
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(timeout=60)
            CASES[mode.value, case.operation.label] += 1
            _assert_clean(response)

        try:
            check()
        except Unsatisfiable:
            # Nothing to get wrong in a request without parameters or body (GET /livez): no invalid form exists.
            assert mode is GenerationMode.NEGATIVE and operation.method == "get", operation.label


@pytest.mark.parametrize("route", ["/classify", "/classify_random_forest", "/explain", "/reload"])
def test_hand_written_bad_requests_over_http(server, route):
    headers = {"Authorization": f"Bearer {TOKEN}"} if route == "/reload" else {}
    for case, body in HAND_WRITTEN.items():
        content = body if isinstance(body, str) else json.dumps(body)
        response = httpx.post(
            f"{server}{route}", content=content, headers={**headers, "content-type": "application/json"}, timeout=60
        )
        CASES["hand-written", route] += 1
        _assert_clean(response)
        if route != "/reload":  # reload takes no body and may ignore one
            assert 400 <= response.status_code < 500, (case, response.status_code)
    wrong_type = httpx.post(f"{server}{route}", content=b"penguins", headers={**headers, "content-type": "text/csv"})
    _assert_clean(wrong_type)


def test_fuzzing_covered_every_operation(api_schema, figures):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {label for (mode, label) in CASES if mode == "positive"} == {o.label for o in operations}
    assert {label for (mode, label) in CASES if mode == "negative"} >= {
        o.label for o in operations if o.method == "post"
    }
    figures["fuzzing"] = {
        "operations": len(operations),
        "valid generated requests": sum(n for (mode, _), n in CASES.items() if mode == "positive"),
        "invalid generated requests": sum(n for (mode, _), n in CASES.items() if mode == "negative"),
        "hand-written bad requests": sum(n for (mode, _), n in CASES.items() if mode == "hand-written"),
        "5xx": 0,
    }
