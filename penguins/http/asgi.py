"""The small ASGI pieces every guard shares: the one writer of a JSON answer (an error's body is its own,
`ServingError.body`), and header reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from penguins.errors import ServingError

JSON_TYPES = ("application/json",)


async def send_error(
    send: Callable[..., Any], error: ServingError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A refusal or an error, as every one is answered: its status and `ServingError.body`."""
    await send_json(send, error.status, error.body(), headers=headers)


async def send_json(
    send: Callable[..., Any],
    status: int,
    data: bytes,
    length: int | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """`data`, already JSON; `length` when it is not len(data) (a HEAD answer)."""
    size = str(len(data) if length is None else length).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", size), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def has_body(scope: dict[str, Any]) -> bool:
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return header(scope, b"transfer-encoding") is not None


def is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower().decode("latin-1")
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))
