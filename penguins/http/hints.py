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
    """The 400 made to say what to send: each unknown field named with the closest allowed one; the likeliest
    mistakes (a bare penguin, a list without its wrapper) answered with their one fix; the headline (`error`) the first
    problem in words, with where it is, instead of BentoML's "N validation error for Input"."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    details = answer.get("detail") if isinstance(answer, dict) else None
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details) or not details:
        return body
    for detail in details:
        loc = detail.get("loc")
        if detail.get("type") == "extra_forbidden" and loc:
            detail["msg"] = unknown_field_message(str(loc[-1]), top_level if len(loc) == 1 else FEATURES)
    fix = _one_fix(details, top_level)
    if fix is not None:
        details[:] = [fix]
    first = details[0]
    more = f" (and {len(details) - 1} more: see detail)" if len(details) > 1 else ""
    answer["error"] = f"{where(first.get('loc') or [])}: {_words(str(first.get('msg', '')))}{more}"
    return json.dumps(answer).encode()


def _one_fix(details: list[dict[str, Any]], top_level: tuple[str, ...]) -> dict[str, Any] | None:
    """The one thing to change, for a body that is a penguin or a list where the wrapper object belongs."""
    wrapper = next((f for f in ("penguins", "penguin") if f in top_level), None)
    if wrapper is None:
        return None
    extra = [d["loc"][0] for d in details if d.get("type") == "extra_forbidden" and len(d.get("loc") or []) == 1]
    missing = any(d.get("type") == "missing" and d.get("loc") == [wrapper] for d in details)
    many = wrapper == "penguins"
    shape = '{"penguins": [{"island": ..., ...}]}' if many else '{"penguin": {"island": ..., ...}}'
    if missing and extra and set(extra) <= set(FEATURES):
        what = "a penguin's fields at the top level"
        return {"type": "missing", "loc": [wrapper], "msg": f"{what}: wrap {'it in a list ' if many else 'it '}{shape}"}
    if any(d.get("type") == "model_type" and d.get("loc") == [] for d in details):
        return {"type": "model_type", "loc": [], "msg": f"the body must be an object: send {shape}"}
    return None


def where(loc: list[Any]) -> str:
    """`["penguins", 0, "body_mass_g"]` -> `penguins[0].body_mass_g`; the body itself for an empty location."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _words(message: str) -> str:
    return message.removeprefix("Input should be ")
