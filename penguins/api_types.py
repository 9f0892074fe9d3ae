"""The service's own argument and answer types: the penguins an endpoint takes, the predictions it answers, the
optional model name (shared by the service, the per-model routes and the benchmark's no-op service)."""

from __future__ import annotations

from typing import Annotated

from bentoml.validators import ContentType
from pydantic import Field

from penguins import adapter
from penguins.contract import Prediction, penguins_field
from penguins.settings import get_settings

# The endpoints' input and output types (also used by the benchmark's no-op service, to compare like with like).
Penguins = penguins_field(get_settings().max_penguins)
# An explicit media type: without it BentoML 1.4.39 rebuilds the JSON schema of a list output on every response
# just to find out it is JSON (~20% of a small request's CPU). Our answers are built from the model's arrays: they
# are sent as returned, not validated again (adapter.answers.send_answers_as_returned).
Predictions = Annotated[list[Prediction], ContentType("application/json"), adapter.AS_RETURNED]
# BentoML 1.4.39 flattens an optional top-level argument to its first `anyOf` branch, so the OpenAPI document would
# say `type: string, default: null` (invalid); `nullable` keeps the published schema true to what the API accepts.
ModelName = Annotated[
    str | None,
    Field(
        description="A served model's name or algorithm; omit for the best by CV accuracy",
        json_schema_extra={"nullable": True},
    ),
]
