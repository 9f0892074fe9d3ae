"""A test tier whose tools are missing skips here, saying why; under CI=true it fails instead, so that a CI run can
never go green on tiers that did not run."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str, *, module: bool = False) -> None:
    """Skip (fail under CI=true) the test, or the whole module when called at import."""
    if in_ci():
        pytest.fail(f"CI=true and this tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def require_import(module_name: str, reason: str):
    """`pytest.importorskip`, failing under CI=true."""
    try:
        return __import__(module_name)
    except ImportError:
        unavailable(reason)
