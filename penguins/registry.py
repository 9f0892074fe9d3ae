"""One worker's registry: the snapshot it serves, refreshed on reload, on a signal from another worker or replica,
and by a periodic check; and what it reports about its replica."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path

from penguins import publishing as repository
from penguins.bucket import Repository
from penguins.loaded import LoadedModel
from penguins.names import default_store_dir
from penguins.refresh import Change, refresh
from penguins.replica import ReplicaStatus, replica_name, worker_index
from penguins.settings import get_settings
from penguins.signals import LocalSignals, Signal
from penguins.snapshot import Snapshot
from penguins.upstream import RepositoryStatus, Upstream, now

logger = logging.getLogger(__name__)


class Registry:
    """The loaded models of one worker process, cached by tag, and how the worker keeps up with the others.

    A reload re-reads the store (after pulling what the model repository has, when one is configured), then
    signals: the local signal files (penguins.signals) and the repository's generation object (replicas on other
    machines). Each worker looks at the local signals on every request (one stat each) and, every
    `sync_interval_seconds`, in a background check, at all of them: a replica without traffic follows too, a
    repository that was unreachable is caught up with, a store that could not be read is read again. Nothing that
    fails here takes the loaded models down: it is reported (reload, /models, the log) while the loaded models serve.
    """

    def __init__(
        self, store_dir: Path, compiled: bool = True, repository: Repository | None = None, replica: str | None = None
    ):
        self.store_dir = Path(store_dir)
        self.compiled = compiled
        self.replica = replica or replica_name()
        self.signals = LocalSignals(self.store_dir)
        self.upstream = Upstream(repository) if repository is not None else None
        # Called with the new snapshot after every refresh that changed it (served tags, failures or rejections),
        # under the registry's lock, from the thread that refreshed: a request's (reload, a signal seen) or the
        # periodic check's. A listener that raises is logged and the others still run.
        self.listeners: list[Callable[[Snapshot], None]] = []
        # Kept for a batch that was queued before its model was removed (it still finishes on it).
        self.retired: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._snapshot = Snapshot()
        self._loaded_once = False
        self._retry = False  # the store could not be read last time: the periodic check tries again
        self._last_check: str | None = None
        self._interval: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def reload(self) -> Change:
        """Pull, re-read the store now, then signal every other worker and replica; the answer says how far the
        signal got."""
        with self._lock:
            change = self._refresh(pull=True, why="reload")
            signal = self._signal()
        return replace(change, signal=signal)

    def is_stale(self) -> bool:
        """True when never loaded or a local signal changed since: one or two stat() calls, no network."""
        return not self._loaded_once or self.signals.state() != self.signals.seen

    def sync(self) -> Snapshot:
        """Catch up with a reload another worker or replica of this store signalled (the per-request path: the
        repository is consulted only by the first load and the periodic check)."""
        if self.is_stale():
            with self._lock:
                state = self.signals.state()
                if not self._loaded_once or state != self.signals.seen:
                    self._refresh(pull=not self._loaded_once, why="signal" if self._loaded_once else "start")
                    self.signals.followed(state)
        return self._snapshot

    def check(self) -> None:
        """The periodic check: the local signals, the repository's signal (one HEAD request), and retries of what
        failed (a pull, a signal owed to the repository, a store that could not be read)."""
        generation, answered = self.upstream.poll(self.replica) if self.upstream else (None, False)
        if answered:  # any signal owed to it is written now
            self.signals.failed = [f for f in self.signals.failed if f[0] != "repository"]
        with self._lock:
            local = self.signals.state()
            pull = answered and self.upstream is not None and self.upstream.wants_pull(generation)
            if pull or not self._loaded_once or local != self.signals.seen or self._retry:
                self._refresh(pull=pull, why="periodic check")
                self.signals.followed(local)
                if pull and self.upstream is not None and not self.upstream.pull_owed:
                    self.upstream.seen_generation = generation
        self._last_check = now()

    def start(self, interval: float) -> None:
        """Run `check` every `interval` seconds in a daemon thread, until `stop`."""
        if self._thread is not None:
            return
        self._interval = interval
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="penguins-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def status(self) -> ReplicaStatus:
        problems = self.signals.problems(with_repository=self.upstream is not None)
        return ReplicaStatus(
            name=self.replica,
            worker=worker_index(),
            store=str(self.store_dir),
            sync_interval_seconds=self._interval,
            last_check=self._last_check,
            signal_error="; ".join(problems) or None,
        )

    def repository_status(self) -> RepositoryStatus | None:
        return self.upstream.status() if self.upstream else None

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # the check must outlive any one failure; say what it was
                logger.exception("periodic check of the model store failed")

    def _refresh(self, pull: bool, why: str) -> Change:
        if pull and self.upstream is not None:
            self.upstream.pull(self.store_dir)
        pulled = self.upstream.pull_failures if self.upstream else ()
        refreshed = refresh(self._snapshot, self.store_dir, self.compiled, pulled)
        self._retry = refreshed.retry
        if refreshed.retired is not None:
            self.retired = refreshed.retired
        self._replace(refreshed.snapshot, why)
        if refreshed.retired is not None:
            self._loaded_once = True
        return refreshed.change

    def _replace(self, snapshot: Snapshot, why: str) -> None:
        """Serve `snapshot` if it differs from what is served, and tell the listeners."""
        old = self._snapshot
        if old.same_as(snapshot):
            return
        self._snapshot = snapshot
        if {m.tag for m in old.models.values()} != {m.tag for m in snapshot.models.values()}:
            served = ", ".join(m.tag for m in snapshot.models.values()) or "nothing"
            logger.info("replica %s now serves %s (after a %s)", self.replica, served, why)
        for listener in list(self.listeners):
            try:
                listener(snapshot)
            except Exception:  # one listener's fault must not stop the others, nor the reload
                logger.exception("model registry listener %r failed", listener)

    def _signal(self) -> Signal:
        written, failed = self.signals.write()
        if self.upstream is not None:
            missed = self.upstream.signal(self.replica)
            if missed is None:
                written.append("repository")
            else:
                failed.append(missed)
        self.signals.failed = failed
        for where, why in failed:
            logger.error("reload signal not written to the %s: %s", where, why)
        return Signal.of(tuple(written), tuple(failed), pending=self.upstream is not None and self.upstream.signal_owed)


@cache
def get_registry() -> Registry:
    """The worker's one registry, made on first use (never at import)."""
    return Registry(default_store_dir(), compiled=get_settings().compiled, repository=repository.configured())
