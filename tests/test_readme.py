"""The README's Quickstart snippets run as written against a real server (the address is the only thing changed).
The own-classifier section is run by tests/test_own_models.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import ROOT, run_train, serve

pytestmark = pytest.mark.integration


def _blocks(language: str) -> list[str]:
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n```", 1)[0] for block in quickstart.split(f"```{language}\n")[1:]]


def test_the_quickstart_commands_are_the_ones_ci_runs():
    commands = _blocks("bash")[0]
    assert "uv run --no-dev bentoml serve --host 127.0.0.1" in commands
    assert "uv run pytest " in commands
    assert "\nuv run pytest\n" in (ROOT / ".ci" / "run").read_text()  # the README's test command, as a line


def test_the_client_example_and_the_curl_run_as_written(tmp_path):
    (client_code,) = _blocks("python")
    assert not re.search(r"^\s*(from|import) penguins", client_code, re.M), "the example must need only bentoml"
    home = tmp_path / "home"
    run_train(home, "--models", "random-forest", "svm", "knn")
    with serve(home, tmp_path / "serve.log") as url:
        code = client_code.replace("http://127.0.0.1:3000", url)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        curl = _blocks("bash")[1].replace("127.0.0.1:3000", url.removeprefix("http://"))
        assert shutil.which("curl"), "the README's curl needs curl"
        command, _, shown = curl.partition("\n#")
        answer = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert_shown_answer("#" + shown, json.loads(answer.stdout))


def assert_shown_answer(comment: str, answered: Any) -> None:
    """The README's `# [...]` comment is what the server answered: the same keys and species exactly, every number
    to the digits shown, and the model's name (its version is the store's own)."""
    text = "\n".join(line.removeprefix("#").strip() for line in comment.splitlines())
    shown = json.loads(text, parse_float=lambda digits: (float(digits), len(digits.partition(".")[2])))
    assert _same(shown, answered), f"the README shows {text}\nthe server answered {json.dumps(answered)}"


def _same(shown: Any, answered: Any) -> bool:
    if isinstance(shown, tuple):  # (value, decimals shown)
        value, decimals = shown
        return isinstance(answered, float) and round(answered, decimals) == round(value, decimals)
    if isinstance(shown, dict):
        return (
            isinstance(answered, dict)
            and shown.keys() == answered.keys()
            and all(_same(shown[k], answered[k]) for k in shown)
        )
    if isinstance(shown, list):
        return isinstance(answered, list) and len(shown) == len(answered) and all(map(_same, shown, answered))
    if isinstance(shown, str) and ":" in shown and shown.startswith("penguins-"):  # a tag: name:version
        return isinstance(answered, str) and answered.split(":")[0] == shown.split(":")[0]
    return shown == answered
