"""The BentoML model store as the service sees it: a tolerant scan, models loaded once and cached by tag,
and a registry that reloads on request and keeps every worker of a server on the same generation."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from penguins.bucket import Repository, RepositoryError
from penguins.contract import Penguin, Prediction
from penguins.errors import NoModelLoaded, NotExplainable, ServingError, UnknownModel, reason
from penguins.explain import CUSTOM_OBJECT as EXPLAIN_OBJECT
from penguins.explain import Explainer, Explanation
from penguins.names import MODEL_PREFIX, route_of
from penguins.predict import OnnxPredictor, Predictor, SklearnPredictor, columns_of
from penguins.scan import STORE_FAILURE, Failure, RejectedVersion, Skipped, StoredModel, scan_with_rejected

logger = logging.getLogger(__name__)

# The reload signal: a file in the store itself, so every worker, process and container that serves the store sees
# it. A dot-file: BentoML's own listing of the store looks at folders only.
RELOAD_SIGNAL = ".penguins-reload"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    tag: str
    algorithm: str
    metadata: dict[str, Any]
    predictor: Predictor
    # The explanation data saved with the model; None for a model saved before explanations existed.
    explainer: Explainer | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    @property
    def cv_accuracy(self) -> float:
        return float(self.metadata.get("cv_accuracy_mean", 0.0))

    def predict(self, penguins: Sequence[Penguin]) -> list[dict[str, Any]]:
        """One `Prediction`-shaped row per penguin, built from the arrays directly.

        Plain dicts, not pydantic objects: for 10,000 penguins building `Prediction`s cost ~250 ms, these ~20 ms.
        """
        labels, probabilities = self.predictor.predict(columns_of(penguins))
        classes, tag = self.classes, self.tag
        return [
            {"species": label, "probabilities": dict(zip(classes, row, strict=True)), "model": tag}
            for label, row in zip(
                np.asarray(labels).tolist(), np.asarray(probabilities, dtype=np.float64).tolist(), strict=True
            )
        ]

    def explain(self, penguin: Penguin, k: int) -> Explanation:
        """The prediction (the same predictor as classify) with the saved explanation data around it."""
        if self.explainer is None:
            raise LookupError(f"model {self.tag} was saved without explanation data")
        return self.explainer.explain(penguin, Prediction.model_validate(self.predict([penguin])[0]), k)


def load(stored: StoredModel, compiled: bool = True) -> LoadedModel:
    """Read one model from disk: the ONNX form when it was saved with one (and wanted), else the pipeline."""
    import bentoml
    from bentoml import Model

    model = Model.from_path(stored.path)
    metadata = dict(model.info.metadata)
    try:
        pipeline = bentoml.sklearn.load_model(model)
        classes = [str(c) for c in pipeline.classes_]
    except Exception as error:  # a pickle error says little by itself ("KeyError: 110")
        hint = ""
        if isinstance(error, ModuleNotFoundError):  # trained where a package was installed that the API lacks
            hint = (
                f": the API needs every module the model was trained with; install what provides {error.name!r} "
                "where the API runs (pyproject.toml, then rebuild the image)"
            )
        raise ValueError(f"cannot unpickle the saved pipeline ({reason(error)}){hint}") from error
    predictor: Predictor = SklearnPredictor(pipeline)
    if compiled:
        try:
            onnx_bytes = model.custom_objects.get("onnx")
            if onnx_bytes:
                predictor = OnnxPredictor(onnx_bytes, classes)
        except Exception as error:
            raise ValueError(f"cannot open the compiled ONNX form ({reason(error)})") from error
    explainer = None
    try:
        saved = model.custom_objects.get(EXPLAIN_OBJECT)
        if saved is not None:
            explainer = Explainer.from_saved(saved, pipeline)
    except Exception as error:
        raise ValueError(f"cannot use the saved explanation data ({reason(error)})") from error
    return LoadedModel(stored.name, stored.tag, stored.algorithm, metadata, predictor, explainer)


@dataclass(frozen=True)
class Snapshot:
    """What one worker serves: replaced whole on reload, so a request keeps the models it started with."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    rejected: tuple[RejectedVersion, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    def best(self) -> LoadedModel | None:
        """The default model: highest cross-validated accuracy (ties broken by name)."""
        if not self.models:
            return None
        return max(self.models.values(), key=lambda m: (m.cv_accuracy, m.name))

    def routes(self) -> dict[str, str]:
        """Each served model's own route -> its name: what the service's per-model endpoints are."""
        return {route_of(name): name for name in self.models}

    def lookup(self, requested: str | None = None, explainable: bool = False) -> LoadedModel:
        """The model a request asked for (name, algorithm or exact tag; None: the default one), or a typed error."""
        chosen = self.best() if requested is None else self._find(requested)
        if chosen is None:
            raise self.not_served(requested or "")
        if explainable and chosen.explainer is None:
            raise NotExplainable(chosen.tag)
        return chosen

    def not_served(self, requested: str) -> ServingError:
        """The typed error for a model this snapshot does not serve: 503 when it serves none, else 404 naming the
        served ones, and saying why when the store holds the model (skipped, failed to load, rejected by the gate)."""
        if not self.models:
            names = [s.name for s in self.skipped] + [f.name for f in self.failures] + [r.name for r in self.rejected]
            held = {name: why["reason"] for name in dict.fromkeys(names) if (why := self._why_not(name))}
            return NoModelLoaded(held)
        served = list(self.models.values())
        return UnknownModel(requested, [m.name for m in served], [m.tag for m in served], self._why_not(requested))

    def _why_not(self, requested: str) -> dict[str, str] | None:
        name, _, version = requested.partition(":")
        full = name if name.startswith(MODEL_PREFIX) else MODEL_PREFIX + name
        tag = f"{full}:{version}" if version else None
        for skipped in self.skipped:
            if skipped.name == full:
                return {"reason": skipped.reason, "fix": skipped.fix}
        for failure in self.failures:
            if failure.name == full and (tag is None or failure.tag in (None, tag)):
                return {"reason": f"it failed to load ({failure.reason})"}
        rejected = {r.tag for r in self.rejected if r.name == full}
        if (tag in rejected) or (tag is None and rejected and full not in self.models):
            return {"reason": "the promotion gate rejected it (`models` lists it under `rejected`, with the decision)"}
        if tag is not None and full in self.models:
            return {"reason": f"{tag} is not the served version ({self.models[full].tag})"}
        return None

    def _find(self, requested: str) -> LoadedModel | None:
        name, _, version = requested.partition(":")
        for model in self.models.values():
            short = model.name.removeprefix(MODEL_PREFIX)
            if name in (model.name, short, model.algorithm) and (not version or model.tag == f"{model.name}:{version}"):
                return model
        return None


@dataclass(frozen=True)
class Signal:
    """Where a reload's signal was written (`store`: the shared store; `server`: this server's own, when the store
    is read-only; `repository`: the bucket) and where it could not be."""

    written: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = ()  # (where, why)
    pending: bool = False  # the repository's signal is owed: the periodic check writes it once it answers

    @property
    def reaches(self) -> str:
        if "repository" in self.written:
            return "every replica"
        if "store" in self.written:
            later = "; replicas elsewhere once the repository answers" if self.pending else ""
            return "every replica sharing this store" + later
        if "server" in self.written:
            return "this server's workers only: other replicas were not told"
        return "this worker only: other workers and replicas were not told"


@dataclass(frozen=True)
class RepositoryStatus:
    url: str
    reachable: bool | None  # None: not asked yet
    unreachable_since: str | None
    error: str | None
    last_pull: str | None
    incomplete: tuple[str, ...] = ()  # archives without a manifest: uploads in progress or interrupted
    store_error: str | None = None  # why nothing could be pulled into the local store
    signal_pending: bool = False


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    store: str
    sync_interval_seconds: float | None  # None: no periodic check runs
    last_check: str | None
    signal_error: str | None  # the reload signal could not be read or written: what happened last
    repository: RepositoryStatus | None


@dataclass(frozen=True)
class Change:
    added: list[str]
    updated: list[dict[str, str]]
    removed: list[str]
    failed: list[Failure]
    serving: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    signal: Signal | None = None  # set by reload


def replica_name() -> str:
    """This replica's name: PENGUINS_REPLICA_NAME, else the host (in a container: the container's) name."""
    from penguins.settings import get_settings

    return get_settings().replica_name or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "replica"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


class Registry:
    """The loaded models of one worker process, cached by tag, and how the worker keeps up with the others.

    A reload re-reads the store (after pulling what the model repository has, when one is configured), then
    signals: a file in the store itself (every worker, process and container serving that store sees it), this
    server's own file when the store cannot be written (its other workers still follow), and the repository's
    generation object (replicas on other machines). Each worker looks at the local signals on every request (one
    stat each) and, every `sync_interval_seconds`, in a background check, at all of them: a replica without traffic
    follows too, a repository that was unreachable is caught up with, a store that could not be read is read again.
    Nothing that fails here takes the loaded models down: a store that vanished or cannot be read, a repository that
    does not answer, a version that is corrupt are reported (reload, /models, the log) while the loaded models serve.
    """

    def __init__(
        self, store_dir: Path, compiled: bool = True, repository: Repository | None = None, replica: str | None = None
    ):
        self.store_dir = Path(store_dir)
        self.compiled = compiled
        self.repository = repository
        self.replica = replica or replica_name()
        self.signal_file = self.store_dir / RELOAD_SIGNAL
        # Every worker of one `bentoml serve` has the same parent process: their own signal, for a read-only store.
        key = hashlib.sha256(str(self.store_dir.absolute()).encode()).hexdigest()[:12]
        self.server_signal = Path(tempfile.gettempdir()) / f"penguins-reload-{os.getppid()}-{key}"
        # Called with the new snapshot after every refresh that changed it (served tags, failures or rejections),
        # under the registry's lock, from the thread that refreshed: a request's (reload, a signal seen) or the
        # periodic check's. A listener that raises is logged and the others still run.
        self.listeners: list[Callable[[Snapshot], None]] = []
        # Kept for a batch that was queued before its model was removed (it still finishes on it).
        self.retired: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._snapshot = Snapshot()
        self._loaded_once = False
        self._seen: tuple[Any, Any] | None = None  # the local signals' state when last followed
        self._seen_generation: str | None = None  # the repository's signal when last pulled
        self._retry = False  # the store could not be read last time: the periodic check tries again
        self._read_error: str | None = None  # the last local signal read, if it failed
        self._write_failed: list[tuple[str, str]] = []  # where the last reload's signal could not be written
        self._last_check: str | None = None
        self._interval: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The repository as this worker last saw it.
        self._reachable: bool | None = None
        self._unreachable_since: str | None = None
        self._repository_error: str | None = None
        self._last_pull: str | None = None
        self._pull_owed = repository is not None
        self._signal_owed = False
        self._incomplete: tuple[str, ...] = ()
        self._pull_store_error: str | None = None
        self._pull_failures: tuple[Failure, ...] = ()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- what the service calls -------------------------------------------------------------------------------------

    def reload(self) -> Change:
        """Pull, re-read the store now, then signal every other worker and replica; the answer says how far the
        signal got."""
        with self._lock:
            change = self._refresh(pull=True, why="reload")
            signal = self._write_signals()
        return replace(change, signal=signal)

    def is_stale(self) -> bool:
        """True when never loaded or a local signal changed since: one or two stat() calls, no network."""
        return not self._loaded_once or self._local_state() != self._seen

    def sync(self) -> Snapshot:
        """Catch up with a reload another worker or replica of this store signalled (the per-request path: the
        repository is consulted only by the first load and the periodic check)."""
        if self.is_stale():
            with self._lock:
                state = self._local_state()
                if not self._loaded_once or state != self._seen:
                    self._refresh(pull=not self._loaded_once, why="signal" if self._loaded_once else "start")
                    self._seen = state
                    self._note_signal_read(state)
        return self._snapshot

    def check(self) -> None:
        """The periodic check: the local signals, the repository's signal (one HEAD request), and retries of what
        failed (a pull, a signal owed to the repository, a store that could not be read)."""
        generation, reachable = None, False
        if self.repository is not None:
            try:
                if self._signal_owed:
                    generation = self.repository.signal(self.replica)
                    self._signal_owed = False
                    self._write_failed = [f for f in self._write_failed if f[0] != "repository"]
                    logger.warning("reload signal written to %s now that it answers", self.repository.url)
                else:
                    generation = self.repository.generation()
                self._mark_reachable()
                reachable = True
            except RepositoryError as error:
                self._mark_unreachable(error)
        with self._lock:
            local = self._local_state()
            pull = reachable and (self._pull_owed or generation != self._seen_generation)
            if pull or not self._loaded_once or local != self._seen or self._retry:
                self._refresh(pull=pull, why="periodic check")
                self._seen = local
                self._note_signal_read(local)
                if pull and not self._pull_owed:
                    self._seen_generation = generation
        self._last_check = _now()

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
        repository = None
        if self.repository is not None:
            repository = RepositoryStatus(
                url=self.repository.url,
                reachable=self._reachable,
                unreachable_since=self._unreachable_since,
                error=self._repository_error,
                last_pull=self._last_pull,
                incomplete=self._incomplete,
                store_error=self._pull_store_error,
                signal_pending=self._signal_owed,
            )
        problems = [e for e in (self._read_error, *(w for _, w in self._write_failed)) if e]
        if not self._write_failed and _is_dir(self.store_dir) and not os.access(self.store_dir, os.W_OK):
            # Every worker of a server on a read-only store says so, not only one that tried a reload.
            reach = "other replicas through the repository only" if self.repository else "this server's workers only"
            problems.append(f"{self.store_dir} is not writable here: a reload on this replica reaches {reach}")
        return ReplicaStatus(
            name=self.replica,
            store=str(self.store_dir),
            sync_interval_seconds=self._interval,
            last_check=self._last_check,
            signal_error="; ".join(problems) or None,
            repository=repository,
        )

    # -- inside -----------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # the check must outlive any one failure; say what it was
                logger.exception("periodic check of the model store failed")

    def _local_state(self) -> tuple[Any, Any]:
        return _signal_state(self.signal_file), _signal_state(self.server_signal)

    def _note_signal_read(self, state: tuple[Any, Any]) -> None:
        unreadable = next((s for s in state if isinstance(s, str)), None)
        if unreadable and unreadable != self._read_error:
            logger.error("reload signal: %s; this worker follows reloads only through its periodic check", unreadable)
        self._read_error = unreadable

    def _refresh(self, pull: bool, why: str) -> Change:
        if pull and self.repository is not None:
            self._pull()
        stored, failures, rejected, skipped = scan_with_rejected(self.store_dir)
        local_tags = {m.tag for m in stored} | {f.tag for f in failures if f.tag}
        failures += [f for f in self._pull_failures if f.tag not in local_tags]
        current = self._snapshot.models
        unreadable = next((f for f in failures if f.name == STORE_FAILURE), None)
        self._retry = unreadable is not None
        if current and (unreadable is not None or not _is_dir(self.store_dir)):
            # The store vanished (an unmounted volume, a folder moved away) or cannot be read (permissions): keep
            # serving what is loaded until it is back rather than turn every request into a 503. Removing one
            # model's folder still removes that model.
            self._retry = True
            what = unreadable.reason if unreadable else f"the model store {self.store_dir} is not there"
            gone = Failure(STORE_FAILURE, f"{what}; serving the models loaded before")
            if gone not in self._snapshot.failures:
                logger.error("%s", gone.reason)
            self._replace(Snapshot(current, (gone,), self._snapshot.rejected, self._snapshot.skipped), why)
            return Change(added=[], updated=[], removed=[], failed=[gone], serving=[m.tag for m in current.values()])
        models: dict[str, LoadedModel] = {}
        for entry in stored:
            cached = current.get(entry.name)
            if cached is not None and cached.tag == entry.tag:
                models[entry.name] = cached
                continue
            try:
                models[entry.name] = load(entry, self.compiled)
            except Exception as error:
                failures.append(Failure(entry.name, reason(error), entry.tag))
        # A broken new version (half-written, unreadable, failing to load) must not take down the one that works.
        for failure in failures:
            if failure.name in current and failure.name not in models:
                models[failure.name] = current[failure.name]
        self.retired = {n: m for n, m in current.items() if n not in models}
        self._replace(Snapshot(dict(sorted(models.items())), tuple(failures), tuple(rejected), tuple(skipped)), why)
        self._loaded_once = True
        return Change(
            added=[m.tag for n, m in models.items() if n not in current],
            updated=[
                {"name": n, "from": current[n].tag, "to": m.tag}
                for n, m in models.items()
                if n in current and current[n].tag != m.tag
            ],
            removed=[m.tag for n, m in current.items() if n not in models],
            failed=failures,
            serving=[m.tag for m in models.values()],
            skipped=skipped,
        )

    def _replace(self, snapshot: Snapshot, why: str) -> None:
        """Serve `snapshot` if it differs from what is served, and tell the listeners."""
        old = self._snapshot
        if (
            {n: m.tag for n, m in old.models.items()} == {n: m.tag for n, m in snapshot.models.items()}
            and old.failures == snapshot.failures
            and old.rejected == snapshot.rejected
            and old.skipped == snapshot.skipped
        ):
            return
        self._snapshot = snapshot
        if {m.tag for m in old.models.values()} != {m.tag for m in snapshot.models.values()}:
            logger.info(
                "replica %s now serves %s (after a %s)",
                self.replica,
                ", ".join(m.tag for m in snapshot.models.values()) or "nothing",
                why,
            )
        for listener in list(self.listeners):
            try:
                listener(snapshot)
            except Exception:  # one listener's fault must not stop the others, nor the reload
                logger.exception("model registry listener %r failed", listener)

    def _pull(self) -> None:
        assert self.repository is not None
        try:
            result = self.repository.pull(self.store_dir)
        except RepositoryError as error:
            self._mark_unreachable(error)
            self._pull_owed = True
            return
        self._mark_reachable()
        self._pull_owed = False
        self._last_pull = _now()
        self._incomplete = tuple(result.incomplete)
        if result.store_error and result.store_error != self._pull_store_error:
            logger.error("model repository: %s", result.store_error)
        self._pull_store_error = result.store_error
        self._pull_failures = tuple(Failure(f.name, f.reason, f.tag) for f in result.failures)

    def _mark_unreachable(self, error: Exception) -> None:
        if self._reachable is not False:
            self._unreachable_since = _now()
            logger.error("model repository unreachable (%s); the loaded models keep serving", error)
        self._reachable = False
        self._repository_error = str(error)

    def _mark_reachable(self) -> None:
        if self._reachable is False:
            logger.warning(
                "model repository %s answers again (unreachable since %s)",
                self.repository.url if self.repository else "",
                self._unreachable_since,
            )
        self._reachable = True
        self._unreachable_since = None
        self._repository_error = None

    def _write_signals(self) -> Signal:
        written: list[str] = []
        failed: list[tuple[str, str]] = []
        token = uuid.uuid4().hex
        try:
            _replace_file(self.signal_file, token)
            written.append("store")
        except OSError as error:
            failed.append(("store", f"cannot write {self.signal_file} ({reason(error)})"))
            try:
                _replace_file(self.server_signal, token)
                written.append("server")
            except OSError as other:
                failed.append(("server", f"cannot write {self.server_signal} ({reason(other)})"))
        pending = False
        if self.repository is not None:
            try:
                self._seen_generation = self.repository.signal(self.replica)
                self._signal_owed = False
                written.append("repository")
                self._mark_reachable()
            except RepositoryError as error:
                failed.append(("repository", f"{error} (written by the periodic check once it answers)"))
                self._signal_owed = pending = True
                self._mark_unreachable(error)
        self._seen = self._local_state()
        self._write_failed = failed
        for where, why in failed:
            logger.error("reload signal not written to the %s: %s", where, why)
        return Signal(tuple(written), tuple(failed), pending)
