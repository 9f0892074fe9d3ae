"""The README's Quickstart snippets run as written against a real server (the address is the only thing changed).
The own-classifier section is run by tests/test_own_models.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from penguins.testing import ROOT, run_train, serve

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
        command = curl.split("\n#")[0]
        answer = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)[0]["species"] == "Gentoo"
