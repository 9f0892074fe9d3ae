"""What the server's log says: no traceback for a client's mistake.

BentoML logs a ~25-line traceback at ERROR for every 400 (`log_exception` in `bentoml._internal.server.http_app`).
A `logging.Filter` on that logger turns a validation error or a BentoML error below 500 into one DEBUG line; server
errors keep their traceback.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
logger = logging.getLogger("penguins.http")


class ClientErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client = isinstance(error, ValidationError) or (
            isinstance(error, BentoMLException) and error.error_code.value < 500
        )
        if client:
            logger.debug("%s answered %s: %s", record.getMessage(), type(error).__name__, error)
        return not client


def quiet_client_errors() -> None:
    """Install the filter once in this process."""
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrors) for f in target.filters):
        target.addFilter(ClientErrors())
