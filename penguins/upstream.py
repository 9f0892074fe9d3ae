"""The model repository (S3) as one worker sees it: reachable or not and since when, the last pull and what it
could not bring, and the reload signal owed to it while it does not answer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from penguins.bucket import Repository, RepositoryError
from penguins.scan import Failure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositoryStatus:
    """The model repository as this worker last saw it: also what `models` and `reload` answer."""

    url: Annotated[str, Field(description="PENGUINS_MODEL_REPOSITORY")]
    reachable: Annotated[bool | None, Field(description="As this worker last saw it; null before it first asked")]
    unreachable_since: str | None
    error: str | None
    last_pull: Annotated[str | None, Field(description="When this worker last fetched what the local store lacked")]
    incomplete: tuple[str, ...] = Field(
        default=(), description="Versions uploaded without a manifest (in progress or interrupted)"
    )
    store_error: str | None = Field(
        default=None, description="Why nothing could be pulled into the local store (read-only)"
    )
    signal_pending: bool = Field(
        default=False, description="A reload's signal could not be written yet; retried periodically"
    )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Upstream:
    """One worker's link to the model repository: what it pulls, signals and last heard. Nothing here raises: a
    repository that does not answer is reported, and the pull or the signal is owed until it does."""

    def __init__(self, repository: Repository):
        self.repository = repository
        self.pull_owed = True
        self.signal_owed = False
        self.seen_generation: str | None = None  # the repository's signal when last pulled
        self.pull_failures: tuple[Failure, ...] = ()
        self._reachable: bool | None = None
        self._unreachable_since: str | None = None
        self._error: str | None = None
        self._last_pull: str | None = None
        self._incomplete: tuple[str, ...] = ()
        self._store_error: str | None = None

    def pull(self, store_dir: Path) -> None:
        """Fetch into the local store what it lacks; owed again when the repository does not answer."""
        try:
            result = self.repository.pull(store_dir)
        except RepositoryError as error:
            self._unreachable(error)
            self.pull_owed = True
            return
        self._reachable_again()
        self.pull_owed = False
        self._last_pull = now()
        self._incomplete = tuple(result.incomplete)
        if result.store_error and result.store_error != self._store_error:
            logger.error("model repository: %s", result.store_error)
        self._store_error = result.store_error
        self.pull_failures = tuple(Failure(f.name, f.reason, f.tag) for f in result.failures)

    def poll(self, replica: str) -> tuple[str | None, bool]:
        """The periodic check's question (one HEAD request), writing the owed signal first: (generation, answered)."""
        try:
            if self.signal_owed:
                generation = self.repository.signal(replica)
                self.signal_owed = False
                logger.warning("reload signal written to %s now that it answers", self.repository.url)
            else:
                generation = self.repository.generation()
        except RepositoryError as error:
            self._unreachable(error)
            return None, False
        self._reachable_again()
        return generation, True

    def wants_pull(self, generation: str | None) -> bool:
        return self.pull_owed or generation != self.seen_generation

    def signal(self, replica: str) -> tuple[str, str] | None:
        """Signal a reload to every replica; None when written, else (where, why), and the signal is owed."""
        try:
            self.seen_generation = self.repository.signal(replica)
        except RepositoryError as error:
            self.signal_owed = True
            self._unreachable(error)
            return "repository", f"{error} (written by the periodic check once it answers)"
        self.signal_owed = False
        self._reachable_again()
        return None

    def status(self) -> RepositoryStatus:
        return RepositoryStatus(
            url=self.repository.url,
            reachable=self._reachable,
            unreachable_since=self._unreachable_since,
            error=self._error,
            last_pull=self._last_pull,
            incomplete=self._incomplete,
            store_error=self._store_error,
            signal_pending=self.signal_owed,
        )

    def _unreachable(self, error: Exception) -> None:
        if self._reachable is not False:
            self._unreachable_since = now()
            logger.error("model repository unreachable (%s); the loaded models keep serving", error)
        self._reachable = False
        self._error = str(error)

    def _reachable_again(self) -> None:
        if self._reachable is False:
            logger.warning(
                "model repository %s answers again (unreachable since %s)",
                self.repository.url,
                self._unreachable_since,
            )
        self._reachable = True
        self._unreachable_since = None
        self._error = None
