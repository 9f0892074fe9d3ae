"""Settings read from the environment, and the admin token read from a secret file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from penguins.gate import DEFAULT_TOLERANCE
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


# -- docs/configuration.md against Settings ----------------------------------------------------------------------------

CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
VARIABLE = re.compile(r"PENGUINS_[A-Z0-9_]+")


def _doc_defaults() -> dict[str, str]:
    """Variable -> the default the doc's table gives it. A row may name several variables (`A`, `B` or `A` / `B`)
    with as many defaults, in order, separated the same way."""
    defaults: dict[str, str] = {}
    for line in CONFIGURATION_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        names = VARIABLE.findall(cells[0])
        if not names:
            continue
        values = [v.strip() for v in re.split(r",\s+|\s+/\s+", cells[1])] if len(names) > 1 else [cells[1]]
        assert len(values) == len(names), f"{cells[0]}: {len(names)} variables, defaults {cells[1]!r}"
        defaults.update(zip(names, values, strict=True))
    return defaults


def _renderings(default: object) -> set[str]:
    """How the doc may write a default: as the environment spells it, or in KiB/MiB for a byte count."""
    if isinstance(default, bool):
        return {str(default).lower()}
    if isinstance(default, int | float):
        shown = {str(default), f"{default:g}"}
        for unit, size in (("KiB", 1024), ("MiB", 1024 * 1024)):
            if isinstance(default, int) and default >= size and default % size == 0:
                shown.add(f"{default // size} {unit}")
        return shown
    if isinstance(default, list):
        return {f"`{default}`"}
    return {str(default), f"`{default}`"}


def test_the_configuration_doc_lists_every_setting_with_its_default_and_nothing_else(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PENGUINS_"):
            monkeypatch.delenv(name)
    documented = _doc_defaults()
    fields = {f"PENGUINS_{name.upper()}": name for name in Settings.model_fields}
    assert sorted(set(fields) - set(documented)) == [], "settings the doc's table lacks"
    named = set(VARIABLE.findall(CONFIGURATION_DOC.read_text()))
    assert sorted(named - set(fields)) == [], "variables the doc names that are no setting"
    defaults = Settings()
    for variable, name in fields.items():
        default = getattr(defaults, name)
        if default is None:  # unset: the doc says what that means (unset, host name, a path) in its own words
            assert documented[variable] and not documented[variable][0].isdigit(), variable
            continue
        assert documented[variable] in _renderings(default), (variable, documented[variable], default)


def test_the_tolerance_default_is_the_gates():
    assert Settings.model_fields["tolerance"].default == DEFAULT_TOLERANCE
