"""Which replica this is, and what it reports about itself in /models: its store, its sync, its signals, its
repository."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from penguins.settings import get_settings
from penguins.upstream import RepositoryStatus


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    store: str
    sync_interval_seconds: float | None  # None: no periodic check runs
    last_check: str | None
    signal_error: str | None  # the reload signal could not be read or written: what happened last
    repository: RepositoryStatus | None


def replica_name() -> str:
    """This replica's name: PENGUINS_REPLICA_NAME, else the host (in a container: the container's) name."""
    return get_settings().replica_name or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "replica"
