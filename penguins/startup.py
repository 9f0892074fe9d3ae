"""What a server says when it starts: the store it reads, how many models it serves, and, when none, the exact
command that trains one into that very store."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from penguins.names import MODEL_PREFIX
from penguins.scan import Failure, StoredModel
from penguins.snapshot import Snapshot


def train_command(store_dir: Path) -> str:
    """`BENTOML_HOME=<home> uv run python train.py` for the store at `store_dir` ($BENTOML_HOME/models)."""
    return f"BENTOML_HOME={shlex.quote(str(Path(store_dir).absolute().parent))} uv run python train.py"


def startup_line(store_dir: Path, snapshot_or_listing: Snapshot | Sequence[Any]) -> str:
    """One line for the start-up log. `snapshot_or_listing`: the registry's `Snapshot`, `scan.scan`'s
    `(stored, failures)`, or a list of `StoredModel`s."""
    names, unserved, problems = _served_and_not(snapshot_or_listing)
    where = f"model store {Path(store_dir).absolute()}"
    held = f"; held but not served: {', '.join(unserved)} (GET /models says why)" if unserved else ""
    held += "".join(f"; {problem}" for problem in problems)
    if names:
        count = f"{len(names)} model{'s' if len(names) != 1 else ''}"
        return f"serving {count} from the {where}: {', '.join(names)}{held}"
    return (
        f"serving no model: the {where} holds no servable penguin model{held}. "
        f"Train one into it with `{train_command(store_dir)}`, then call reload (POST /reload)"
    )


def _served_and_not(given: Snapshot | Sequence[Any]) -> tuple[list[str], list[str], list[str]]:
    """(names served, penguin names held but not served, what failed beyond one model: the store, the repository)."""
    failures: Sequence[Failure] = ()
    others: list[str] = []
    if isinstance(given, Snapshot):
        served = sorted(given.models)
        failures = given.failures
        others = [r.name for r in given.rejected] + [s.name for s in given.skipped]
    elif len(given) == 2 and all(isinstance(part, list | tuple) for part in given):  # scan's (stored, failures)
        stored, failures = given
        served = sorted(m.name for m in stored)
    else:
        served = sorted(m.name for m in given if isinstance(m, StoredModel))
    others += [f.name for f in failures if f.name.startswith(MODEL_PREFIX)]
    problems = [f.reason for f in failures if not f.name.startswith(MODEL_PREFIX)]
    return served, sorted(set(others) - set(served)), problems
