"""No 5xx on any input, against a real `bentoml serve`: schemathesis generates requests from the server's own OpenAPI
document (valid and invalid ones) for every operation, and the hand-written bad requests are replayed over HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from penguins.contract import EXAMPLE_PENGUIN
from penguins.http.openapi import package_version
from tests.harness import ROOT, serve
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
            # Nothing to get wrong in a request that takes no parameters and no body (GET /livez, POST /models): no
            # invalid form exists.
            assert mode is GenerationMode.NEGATIVE and not _takes_input(operation), operation.label


def _takes_input(operation) -> bool:
    return bool(operation.definition.raw.get("requestBody") or operation.definition.raw.get("parameters"))


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
    assert wrong_type.status_code == 415, wrong_type.text


def test_fuzzing_covered_every_operation(api_schema, figures):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {label for (mode, label) in CASES if mode == "positive"} == {o.label for o in operations}
    assert {label for (mode, label) in CASES if mode == "negative"} >= {o.label for o in operations if _takes_input(o)}
    assert {o.label for o in operations if _takes_input(o)} >= {"POST /classify", "POST /explain"}
    figures["fuzzing"] = {
        "operations": len(operations),
        "valid generated requests": sum(n for (mode, _), n in CASES.items() if mode == "positive"),
        "invalid generated requests": sum(n for (mode, _), n in CASES.items() if mode == "negative"),
        "hand-written bad requests": sum(n for (mode, _), n in CASES.items() if mode == "hand-written"),
        "5xx": 0,
    }


def _written_by_schemathesis(directory: Path) -> dict[str, int]:
    """What schemathesis' CLI keeps in `directory` (its cache, its reports), each file with its mtime."""
    return {
        str(path.relative_to(directory)): path.stat().st_mtime_ns
        for folder in (".schemathesis", "schemathesis-report")
        for path in (directory / folder).rglob("*")
        if path.is_file()
    }


def test_schemathesis_cli_passes_with_its_default_checks(server, tmp_path, figures):
    """`st run` against the published document: every default check (status codes, content types, response
    schemas and headers, valid data accepted and invalid refused, unsupported methods, ignored auth, ...). Its one
    hook (tests/schemathesis_hooks.py) makes generated columns equally long: the rule JSON Schema cannot state."""
    hooks = Path(__file__).with_name("schemathesis_hooks.py")
    before = _written_by_schemathesis(ROOT)
    run = subprocess.run(
        [str(Path(sys.executable).with_name("st")), "run", f"{server}/docs.json",
         "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "30", "--workers", "2", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
    )  # fmt: skip
    # Its cache and reports go to its working directory, the test's own: the checkout is left as it was.
    assert _written_by_schemathesis(tmp_path), "st wrote nowhere: its output moved, look for it in the checkout"
    assert _written_by_schemathesis(ROOT) == before
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert summary, run.stdout[-2000:]
    figures["schemathesis CLI"] = {"generated": int(summary[1]), "passed": int(summary[2]), "checks": "default"}


GENERATED_CALLS = """
import json, sys
import palmer_penguins_classifier_client as package
from palmer_penguins_classifier_client import Client
from palmer_penguins_classifier_client.api.classify import classify
from palmer_penguins_classifier_client.api.explain import explain
from palmer_penguins_classifier_client.api.models import models
from palmer_penguins_classifier_client.models import (
    ClassifyRequest, ExplainRequest, ModelNotServed, Penguin, ValidationErrors,
)

example = json.loads(sys.argv[2])
client = Client(base_url=sys.argv[1], raise_on_unexpected_status=True)  # an undeclared status raises
penguin = Penguin.from_dict(example)
(answer,) = classify.sync(client=client, body=ClassifyRequest(penguins=[penguin]))
unknown = classify.sync(client=client, body=ClassifyRequest(penguins=[penguin], model="no-such"))
kilograms = Penguin.from_dict({**example, "body_mass_g": 4.5})
bad = classify.sync(client=client, body=ClassifyRequest(penguins=[kilograms]))
explained = explain.sync(client=client, body=ExplainRequest(penguin=penguin, k=3))
listing = models.sync(client=client)
assert isinstance(unknown, ModelNotServed) and isinstance(bad, ValidationErrors)
print(json.dumps({
    "species": answer.species.value,
    "allowed": unknown.allowed,
    "loc": bad.detail[0].loc,
    "neighbours": len(explained.neighbours),
    "models": [m.name for m in listing.models],
}))
"""


def test_a_generated_client_installs_and_calls_classify_explain_and_models(server, tmp_path):
    spec = tmp_path / "docs.json"
    spec.write_text(httpx.get(f"{server}/docs.json", timeout=30).text)
    tools = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # its ruff hook
    subprocess.run(
        ["openapi-python-client", "generate", "--path", str(spec), "--meta", "uv", "--output-path", "client"],
        cwd=tmp_path, env=tools, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    pyproject = (tmp_path / "client" / "pyproject.toml").read_text()
    assert f'version = "{package_version()}"' in pyproject, pyproject  # the package's own version, not "None"
    uv = shutil.which("uv")
    assert uv, "uv installs the generated client"
    subprocess.run([uv, "venv", "-q", str(tmp_path / "venv")], check=True, timeout=120)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--python", python, str(tmp_path / "client")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    calls = subprocess.run(
        [python, "-c", GENERATED_CALLS, server, json.dumps(EXAMPLE_PENGUIN)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert calls.returncode == 0, calls.stderr[-3000:]
    result = json.loads(calls.stdout)
    assert result["species"] == "Gentoo" and result["neighbours"] == 3
    assert set(result["allowed"]) == set(result["models"]) and len(result["models"]) == 5
    assert result["loc"] == ["penguins", 0, "body_mass_g"]
