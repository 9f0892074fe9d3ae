"""What this project's models are called, how they are labelled and routed, and where BentoML's store is: the
names every other module spells through here."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT = "palmer-penguins"
MODEL_PREFIX = "penguins-"
# Label set at save time by the promotion gate (penguins.gate): a version labelled rejected is kept, never served.
STATUS_LABEL = "status"
REJECTED = "rejected"


def model_name(algorithm: str) -> str:
    return f"{MODEL_PREFIX}{algorithm}"


def labels_for(algorithm: str) -> dict[str, str]:
    """Labels that tell this project's models from anything else in a user's store."""
    return {"project": PROJECT, "algorithm": algorithm}


# Every per-model route starts so (endpoint_name).
MODEL_ROUTE_PREFIX = "/classify_"


def endpoint_name(algorithm: str) -> str:
    """`random-forest` -> `classify_random_forest`: a Python identifier, so the client can call it."""
    return "classify_" + re.sub(r"\W", "_", algorithm)


MAX_NAME_LENGTH = 40
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def check_model_name(name: str) -> str:
    """The one rule for a servable name (the part after `penguins-`); returns it, or raises ValueError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"invalid model name {name!r}: use lowercase letters and digits in words joined by single hyphens, "
            f"starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. extra-trees)"
        )
    return name


def route_of(name: str) -> str:
    """A stored model's own route, from its model name alone (never from a label someone else may have written)."""
    return "/" + endpoint_name(name.removeprefix(MODEL_PREFIX))


def default_store_dir() -> Path:
    """BentoML's own model store: $BENTOML_HOME/models, read as BentoML documents it (BENTOML_HOME, default
    ~/bentoml)."""
    return Path(os.environ.get("BENTOML_HOME", os.path.join(os.path.expanduser("~"), "bentoml"))) / "models"
