"""Which replica and worker this is, and what it reports about itself in /models: its store, its sync, its
signals. The repository's status is reported beside it (penguins.upstream)."""

from __future__ import annotations

import re
import socket
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from penguins.settings import get_settings


@dataclass(frozen=True)
class ReplicaStatus:
    """This replica as one worker sees it: also what `models` answers as `replica`."""

    name: Annotated[str, Field(description="PENGUINS_REPLICA_NAME, else the host (container) name")]
    worker: int | None
    store: str
    sync_interval_seconds: Annotated[
        float | None, Field(description="How often this worker checks the signals by itself (null: it does not)")
    ]
    last_check: str | None
    signal_error: Annotated[str | None, Field(description="The reload signal could not be read or written: why")]


def replica_name() -> str:
    """This replica's name: PENGUINS_REPLICA_NAME, else the host (in a container: the container's) name."""
    return get_settings().replica_name or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "replica"


def worker_index() -> int | None:
    """This worker's number in its server (1, 2, ...); None outside a server."""
    from bentoml import server_context  # BentoML loads here only: the commands that import this never serve

    return server_context.worker_index
