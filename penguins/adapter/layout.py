"""BentoML's on-disk model store, as the scan reads it and a pull writes into it: `<store>/<name>/<version>/` holding
`model.yaml`, and `<name>/latest`, a file naming the newest version by creation time, written by BentoML only after
a save completed (`bentoml._internal.store.Store`).

Not a patch: a reliance on BentoML's internals, declared and checked like the fixes (by shape, and by what `Tag`
answers), so that a BentoML that lays its store out otherwise shows as `store_layout` off in `/models`, in the
start-up line and in CI's upgrade canary. BentoML's public `bentoml.models.list()` reads every model.yaml with
pure-Python YAML and raises on the first odd folder, which a reload of a shared store cannot afford; its
import/export of archives copies whole models.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from penguins.adapter.guard import Target, fix

STORE_LAYOUT = fix(
    "store_layout",
    "bentoml",
    [
        Target("bentoml._internal.tag", "Tag.path", ("self",)),
        Target("bentoml._internal.tag", "Tag.latest_path", ("self",)),
        # Reads `latest` through `latest_path` and writes it last in `register` (so a listed `latest` is complete).
        Target("bentoml._internal.store", "Store.get", ("self", "tag"), uses=("latest_path", "read_text")),
        Target("bentoml._internal.store", "Store.register", ("self", "tag"), uses=("latest_path", "creation_time")),
    ],
    upstream="not a patch; a public 'latest version of a name' without parsing every model.yaml would retire it",
    what="the store's layout read directly: <name>/<version>/model.yaml and <name>/latest",
    patch=False,
)
LATEST = "latest"


def layout_misfit() -> str | None:
    """What `Tag` answers for a version's folder and the `latest` file, against the layout read here."""
    from bentoml._internal.tag import Tag

    tag = Tag("name", "version")
    found = (tag.path(), tag.latest_path())
    expected = ("name/version", f"name/{LATEST}")
    return None if found == expected else f"Tag lays out {found}, not {expected}"


STORE_LAYOUT.behaviour.append(layout_misfit)


def latest_file(model_dir: Path) -> Path:
    return model_dir / LATEST


def read_latest(model_dir: Path) -> str | None:
    """The version `latest` names, or None when there is no such file."""
    try:
        return latest_file(model_dir).read_text().strip()
    except FileNotFoundError:
        return None


def write_latest(model_dir: Path, version: str) -> None:
    """Make `version` the latest, by rename: a reader sees the old name or the new, never half of one."""
    temporary = model_dir / f".{LATEST}.{uuid.uuid4().hex}"
    temporary.write_text(version)
    os.replace(temporary, latest_file(model_dir))
