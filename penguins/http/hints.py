"""Input hints: API inputs refuse unknown top-level fields (`strict_input`), and a 400 names a refused field and
the closest allowed one (`ErrorHints`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from penguins.contract import FEATURES, unknown_field_message
from penguins.http.routing import ASGIApp

INPUT_FIELDS: dict[str, tuple[str, ...]] = {}


def strict_input(api: Any) -> None:
    """Make one BentoML API method refuse unknown top-level fields (`"modle": "knn"` was silently ignored)."""
    spec = api.input_spec
    INPUT_FIELDS[api.route] = tuple(spec.model_fields)
    if getattr(spec, "__root_input__", False) or spec.model_config.get("extra") == "forbid":
        return
    spec.model_config["extra"] = "forbid"
    spec.model_rebuild(force=True)


class ErrorHints:
    """Rewrite the message of each refused unknown field in a 400 (pydantic says only "Extra inputs are not
    permitted") to name the field and the closest allowed one, or what to send instead of one-hot columns."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        fields = INPUT_FIELDS.get(scope["path"]) if scope["type"] == "http" else None
        if fields is None:
            return await self.app(scope, receive, send)
        start: dict[str, Any] | None = None

        async def hinted(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message  # held until the body is rewritten (its length changes)
                return
            if start is not None and message["type"] == "http.response.body" and not message.get("more_body"):
                body = _with_hints(message.get("body", b""), fields)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                start = None
                return await send({**message, "body": body})
            await send(message)

        await self.app(scope, receive, hinted)


def _with_hints(body: bytes, top_level: tuple[str, ...]) -> bytes:
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    details = answer.get("detail") if isinstance(answer, dict) else None
    if not isinstance(details, list):
        return body
    changed = False
    for detail in details:
        loc = detail.get("loc") if isinstance(detail, dict) else None
        if detail.get("type") == "extra_forbidden" and loc:
            detail["msg"] = unknown_field_message(str(loc[-1]), top_level if len(loc) == 1 else FEATURES)
            changed = True
    return json.dumps(answer).encode() if changed else body
