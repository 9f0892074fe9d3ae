"""Reading the published OpenAPI document in tests: an operation's request body, its `$ref` followed."""

from __future__ import annotations

from typing import Any


def request_schema(document: dict[str, Any], route: str) -> dict[str, Any]:
    schema = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema
