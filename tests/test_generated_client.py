"""The published contract reads well in a generated client: `openapi-python-client` run for real on the document a
server with per-model routes publishes. Its modules and classes are named for the concepts, each generated once."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.inprocess, pytest.mark.cli]

# A model module per concept: the request bodies, the answers, the penguin in both forms.
CONCEPTS = {
    "penguins_request",
    "classify_request",
    "explain_request",
    "training_map_request",
    "penguin",
    "penguin_columns",
    "prediction",
    "explanation",
    "training_map",
    "model_listing",
    "reload_report",
    "validation_errors",
    "model_not_served",
}


@pytest.fixture(scope="module")
def generated(client, tmp_path_factory) -> Path:
    generator = Path(sys.executable).with_name("openapi-python-client")
    assert generator.exists(), "openapi-python-client is a dev dependency"
    work = tmp_path_factory.mktemp("generated")
    (work / "docs.json").write_text(json.dumps(client.get("/docs.json").json()))
    done = subprocess.run(
        [str(generator), "generate", "--path", "docs.json", "--meta", "none", "--output-path", "client"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (work / "client" / "models").is_dir(), done.stdout + done.stderr
    yield work / "client"
    shutil.rmtree(work, ignore_errors=True)


def test_each_concept_is_one_model_named_for_it(generated):
    modules = {path.stem for path in (generated / "models").glob("*.py")} - {"__init__"}
    assert modules >= CONCEPTS, CONCEPTS - modules
    assert not [m for m in modules if m.endswith("_input") or "io_descriptor" in m or "__" in m]
    classes = [
        node.name
        for path in (generated / "models").glob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ClassDef)
    ]
    assert len(classes) == len(set(classes))  # no concept generated twice under two names
    assert {"PenguinsRequest", "ModelListing", "Explanation", "ReloadReport", "Prediction"} <= set(classes)


def test_every_endpoint_is_a_function_named_like_the_api(generated):
    functions = {path.stem for path in (generated / "api").rglob("*.py")} - {"__init__"}
    assert {"classify", "classify_random_forest", "classify_svm", "explain", "models", "reload"} <= functions
    assert not [f for f in functions if f.startswith("penguin_classifier")]
