"""Schemathesis hooks for `st run` (tests/test_fuzz.py): the one rule of our request bodies that JSON Schema cannot
say. In the columnar form (`"penguins": {"island": [...], ...}`) every column holds one value per penguin; the schema
can bound each list's length but not tie them together, so generated columns are ragged and rightly refused (400),
which schemathesis would count as valid data rejected. Each column is lengthened to the longest by repeating its own
values: every generated value is still sent, so invalid data stays invalid."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    # map_case, not map_body: schemathesis applies it in every phase (its coverage phase skips map_body).
    body = case.body
    columns = body.get("penguins") if isinstance(body, dict) else None
    if not isinstance(columns, dict):
        return case
    lengths = [len(v) for v in columns.values() if isinstance(v, list) and v]
    if lengths:
        n = max(lengths)
        aligned = {k: (v * -(-n // len(v)))[:n] if isinstance(v, list) and v else v for k, v in columns.items()}
        case.body = {**body, "penguins": aligned}
    return case
