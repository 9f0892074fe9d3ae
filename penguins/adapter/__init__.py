"""The one place that touches BentoML's internals (`bentoml._internal`, `_bentoml_impl`, `_bentoml_sdk`) and
uvicorn's: one module per area, each fix declared beside its code with the shape it checks (`guard`). Run in each
worker, never at import. docs/upstream.md has, per fix, the smallest change to BentoML or uvicorn that would retire it.

- `routes`: per-model APIs in the running app (`serve_apis`), the service's own API callers bound once (`bind_once`);
- `batching`: requests never split across batches, the learned batching wait capped;
- `answers`: big bodies validated off the event loop (what was validated kept for the log), answers sent as built;
- `timers`: BentoML's request timeout timer cancelled once answered;
- `uvicorn`: drain on SIGTERM, header/body timeouts and a connection cap;
- `sockets`: a listening socket per worker;
- `layout`: the model store's folders and `latest` file, read and written as BentoML does (a reliance, no patch).
"""

from __future__ import annotations

import logging

from penguins.adapter.answers import (
    AS_RETURNED,
    VALIDATED,
    VALIDATED_JSON,
    send_answers_as_returned,
    validate_off_the_loop,
)
from penguins.adapter.batching import bound_batch_wait, keep_requests_whole
from penguins.adapter.guard import FIXES, AdapterStatus, fits, misfit, status, untested_versions
from penguins.adapter.layout import read_latest, write_latest
from penguins.adapter.routes import bind_once, serve_apis
from penguins.adapter.sockets import spread_connections
from penguins.adapter.timers import release_request_timers
from penguins.adapter.uvicorn import DRAINING, bound_connections, drain_on_shutdown

__all__ = [
    "AS_RETURNED",
    "DRAINING",
    "FIXES",
    "VALIDATED",
    "VALIDATED_JSON",
    "AdapterStatus",
    "apply",
    "bind_once",
    "fits",
    "misfit",
    "read_latest",
    "serve_apis",
    "spread_connections",
    "status",
    "write_latest",
]

logger = logging.getLogger("penguins.adapter")


def apply(
    max_batch_wait_ms: float,
    big_body_bytes: int | None = None,
    keep_json: bool = True,
    drain_s: float | None = None,
    connections: tuple[float, float, int] | None = None,
) -> AdapterStatus:
    """Every patch, in this process (idempotent); logs one line saying which are on and why any is off.
    `connections`: header and body timeouts (s) and the connection cap."""
    untested_versions()
    bound_batch_wait(max_batch_wait_ms)
    release_request_timers()
    if big_body_bytes is not None:
        validate_off_the_loop(big_body_bytes, keep_json)
    keep_requests_whole()
    send_answers_as_returned()
    if drain_s is not None:
        drain_on_shutdown(drain_s)
    if connections is not None:
        bound_connections(*connections)
    report = status()
    off = [f"{f.name} ({f.why_off})" for f in report.fixes if not f.on]
    versions = ", ".join(f"{d} {v}" for d, v in report.versions.items())
    logger.info(
        "Workarounds (BentoML, uvicorn) on %s: %d of %d%s",
        versions,
        len(report.fixes) - len(off),
        len(report.fixes),
        f"; off: {'; '.join(off)}" if off else "",
    )
    return report
