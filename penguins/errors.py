"""The service's typed errors, and the one place where an error becomes a JSON answer.

Not BentoML's exceptions: BentoML 1.4 answers those below 500 with a JSON *array* and replaces the message of those
from 500 up with a generic one, so a client could not rely on the body. Ours keep one shape: `{"error": message,
...details}`, with the details named per error (the field, the allowed values).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

TRAIN_HINT = "train one (uv run python train.py, with the server's BENTOML_HOME) and call reload"


class ServingError(Exception):
    status = 500

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> bytes:
        """The one shape of every error answer, wherever it is sent from."""
        return json.dumps({"error": self.message, **self.details}).encode()

    def response(self):
        from starlette.responses import Response

        return Response(self.body(), status_code=self.status, media_type="application/json")


class Refused(ServingError):
    """A refusal before the app runs (a guard's or the gateway's), with its own status."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message, **details)
        self.status = status


class NoModelLoaded(ServingError):
    status = 503

    def __init__(self, held: dict[str, str] | None = None):
        # `held`: penguin models the store holds but does not serve, and why (saved past the gate, say)
        listed = f"the store holds {', '.join(held)}, not served (`not_served` says why); " if held else ""
        super().__init__(f"no penguin model is loaded: {listed}{TRAIN_HINT}", **({"not_served": held} if held else {}))


class UnknownModel(ServingError):
    status = 404

    def __init__(self, requested: str, served: list[str], served_tags: list[str], why: dict[str, str] | None = None):
        # `why`: what the store knows of a model it holds but does not serve (`reason`, and `fix` when one call would)
        why = why or {}
        because = f": {why['reason']}" if "reason" in why else ""
        super().__init__(
            f"model {requested!r} is not served{because}",
            field="model",
            allowed=served,
            served_tags=served_tags,
            **why,
        )


class NotExplainable(ServingError):
    status = 409

    def __init__(self, tag: str):
        super().__init__(f"model {tag} was saved without explanation data: retrain it", model=tag)


def answers_errors(endpoint: F) -> F:
    """Turn a ServingError raised by an endpoint into its JSON answer (BentoML would answer an error of its own)."""

    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        except ServingError as error:
            return error.response()

    return wrapper  # type: ignore[return-value]


def reason(error: BaseException) -> str:
    """An exception in one line for a report: its type and message."""
    return f"{type(error).__name__}: {error}"
