"""The reload signal files one worker writes and watches: a file in the store itself (every worker, process and
container that serves the store sees it) and this server's own file, for a store that cannot be written."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass as answer_record

from penguins.errors import reason
from penguins.scan import store_is_there

logger = logging.getLogger(__name__)

# A dot-file: BentoML's own listing of the store looks at folders only.
RELOAD_SIGNAL = ".penguins-reload"


@answer_record(frozen=True)
class SignalFailure:
    where: str
    reason: str


@answer_record(frozen=True)
class Signal:
    """Where a reload's signal was written and where it could not be: also what `reload` answers."""

    reaches: Annotated[
        str, Field(description="Who this reload reached: every replica, those sharing the store, or fewer")
    ]
    written: Annotated[
        tuple[str, ...], Field(description="store (the shared store), server (this server's workers), repository")
    ]
    failed: tuple[SignalFailure, ...]
    pending: Annotated[
        bool, Field(description="The repository's signal is written by the periodic check once it answers")
    ]

    @classmethod
    def of(cls, written: tuple[str, ...], failed: tuple[tuple[str, str], ...] = (), pending: bool = False) -> Signal:
        """`failed`: (where, why) pairs; `pending`: the repository's signal is owed."""
        return cls(_reaches(written, pending), written, tuple(SignalFailure(w, r) for w, r in failed), pending)


def _reaches(written: tuple[str, ...], pending: bool) -> str:
    if "repository" in written:
        return "every replica"
    if "store" in written:
        later = "; replicas elsewhere once the repository answers" if pending else ""
        return "every replica sharing this store" + later
    if "server" in written:
        return "this server's workers only: other replicas were not told"
    return "this worker only: other workers and replicas were not told"


class LocalSignals:
    """The store's signal file and this server's, as this worker last followed them (one stat each to compare)."""

    def __init__(self, store_dir: Path):
        self.store_dir = store_dir
        self.store_file = store_dir / RELOAD_SIGNAL
        # Every worker of one `bentoml serve` has the same parent process: their own signal, for a read-only store.
        key = hashlib.sha256(str(store_dir.absolute()).encode()).hexdigest()[:12]
        self.server_file = Path(tempfile.gettempdir()) / f"penguins-reload-{os.getppid()}-{key}"
        self.seen: tuple[Any, Any] | None = None  # the state when last followed
        self.read_error: str | None = None  # the last read, if it failed
        self.failed: list[tuple[str, str]] = []  # where the last reload's signal could not be written, and why

    def state(self) -> tuple[Any, Any]:
        return _signal_state(self.store_file), _signal_state(self.server_file)

    def followed(self, state: tuple[Any, Any]) -> None:
        """Note that this worker caught up with `state`; say once when a signal cannot be read."""
        self.seen = state
        unreadable = next((s for s in state if isinstance(s, str)), None)
        if unreadable and unreadable != self.read_error:
            logger.error("reload signal: %s; this worker follows reloads only through its periodic check", unreadable)
        self.read_error = unreadable

    def write(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Signal a reload: the store's file, else this server's; where it was written and where it was not."""
        written: list[str] = []
        failed: list[tuple[str, str]] = []
        token = uuid.uuid4().hex
        try:
            _replace_file(self.store_file, token)
            written.append("store")
        except OSError as error:
            failed.append(("store", f"cannot write {self.store_file} ({reason(error)})"))
            try:
                _replace_file(self.server_file, token)
                written.append("server")
            except OSError as other:
                failed.append(("server", f"cannot write {self.server_file} ({reason(other)})"))
        self.seen = self.state()  # this worker's own signal: nothing to follow
        return written, failed

    def problems(self, with_repository: bool) -> list[str]:
        """What keeps a reload's signal from reaching as far as it should, as of now."""
        problems = [e for e in (self.read_error, *(w for _, w in self.failed)) if e]
        if not self.failed and store_is_there(self.store_dir) and not os.access(self.store_dir, os.W_OK):
            # Every worker of a server on a read-only store says so, not only one that tried a reload.
            reach = "other replicas through the repository only" if with_repository else "this server's workers only"
            problems.append(f"{self.store_dir} is not writable here: a reload on this replica reaches {reach}")
        return problems


def _signal_state(path: Path) -> tuple[int, int, int] | str | None:
    """What a signal file looks like now (one stat): None when absent, a string when it cannot be read."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot read {path} ({reason(error)})"
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _replace_file(path: Path, content: str) -> None:
    """Write-then-rename: a new inode each time, so a reader never misses a change within one mtime tick."""
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    try:
        temporary.write_text(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
