"""Settings read from the environment, and the admin token read from a secret file."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from penguins.settings import Settings


def test_the_admin_token_comes_from_a_secret_file(tmp_path, monkeypatch):
    secret = tmp_path / "penguins_admin_token"
    secret.write_text("from-a-file\n")  # `docker secret create` and editors leave a trailing newline
    monkeypatch.setenv("PENGUINS_ADMIN_TOKEN_FILE", str(secret))
    monkeypatch.delenv("PENGUINS_ADMIN_TOKEN", raising=False)
    assert Settings().admin_token.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(Settings())


def test_the_token_in_the_environment_still_works(monkeypatch):
    monkeypatch.setenv("PENGUINS_ADMIN_TOKEN", "from-env")
    monkeypatch.delenv("PENGUINS_ADMIN_TOKEN_FILE", raising=False)
    assert Settings().admin_token.get_secret_value() == "from-env"


@pytest.mark.parametrize("problem", ["missing", "empty", "both"])
def test_a_bad_secret_file_fails_the_start(tmp_path, monkeypatch, problem):
    secret = tmp_path / "token"
    if problem != "missing":
        secret.write_text("" if problem == "empty" else "x")
    monkeypatch.setenv("PENGUINS_ADMIN_TOKEN_FILE", str(secret))
    if problem == "both":
        monkeypatch.setenv("PENGUINS_ADMIN_TOKEN", "y")
    else:
        monkeypatch.delenv("PENGUINS_ADMIN_TOKEN", raising=False)
    with pytest.raises((ValidationError, OSError)):
        Settings()
