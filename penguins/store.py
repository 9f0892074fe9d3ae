"""The BentoML model store as the service sees it: a tolerant scan, models loaded once and cached by tag,
and a registry that reloads on request and keeps every worker of a server on the same generation."""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from penguins.contract import Penguin, Prediction
from penguins.explain import CUSTOM_OBJECT as EXPLAIN_OBJECT
from penguins.explain import Explainer, Explanation
from penguins.predict import OnnxPredictor, Predictor, SklearnPredictor, columns_of

PROJECT = "palmer-penguins"
MODEL_PREFIX = "penguins-"
# Written by a reload, watched by every worker (and every server) that serves the same store.
RELOAD_MARKER = "penguins-reload"
# Label set at save time by the promotion gate (penguins.gate): a version labelled rejected is kept, never served.
STATUS_LABEL = "status"
REJECTED = "rejected"


def model_name(algorithm: str) -> str:
    return f"{MODEL_PREFIX}{algorithm}"


def labels_for(algorithm: str) -> dict[str, str]:
    """Labels that tell this project's models from anything else in a user's store."""
    return {"project": PROJECT, "algorithm": algorithm}


def endpoint_name(algorithm: str) -> str:
    """`random-forest` -> `classify_random_forest`: a Python identifier, so the client can call it."""
    return "classify_" + re.sub(r"\W", "_", algorithm)


MAX_NAME_LENGTH = 40
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def check_model_name(name: str) -> str:
    """The one rule for a servable name (the part after `penguins-`); returns it, or raises ValueError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"invalid model name {name!r}: use lowercase letters and digits in words joined by single hyphens, "
            f"starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. extra-trees)"
        )
    return name


def route_of(name: str) -> str:
    """A stored model's own route, from its model name alone (never from a label someone else may have written)."""
    return "/" + endpoint_name(name.removeprefix(MODEL_PREFIX))


def default_store_dir() -> Path:
    """BentoML's own model store: $BENTOML_HOME/models."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


STORE_FAILURE = "model store"


@dataclass(frozen=True)
class Failure:
    name: str
    reason: str
    tag: str | None = None


@dataclass(frozen=True)
class StoredModel:
    """A penguin model's newest version in the store, read from its model.yaml, not loaded yet."""

    name: str
    tag: str
    algorithm: str
    path: Path


@dataclass(frozen=True)
class Skipped:
    """A penguin-named model that is not served, why, and the one call that would serve it."""

    name: str
    tag: str | None
    reason: str
    fix: str


@dataclass(frozen=True)
class RejectedVersion:
    """A version the promotion gate kept out of service, with what it was judged on."""

    name: str
    tag: str
    algorithm: str
    metadata: dict[str, Any]
    created: str


def scan(store_dir: Path) -> tuple[list[StoredModel], list[Failure]]:
    """Find this project's models without trusting the store to be clean.

    BentoML's own `bentoml.models.list()` raises on the first odd entry (a half-written model, a
    `.ipynb_checkpoints` or `lost+found` folder); here each entry stands alone. Folders that cannot be model names
    are ignored; a model that cannot be read is reported as a failure.

    Per model name, the version served is BentoML's `latest` unless it is labelled `status=rejected`; then it is the
    newest complete version not labelled so (none: the name is not served).
    """
    found, failures, _, _ = scan_with_rejected(store_dir, list_rejected=False)
    return found, failures


def scan_with_rejected(
    store_dir: Path, list_rejected: bool = True
) -> tuple[list[StoredModel], list[Failure], list[RejectedVersion], list[Skipped]]:
    """`scan`, plus every version labelled rejected (newest first per name) when `list_rejected`, and the
    penguin-named models that are not served (saved some other way, or under a name that cannot be a route)."""
    from bentoml._internal.models.model import Model

    found: list[StoredModel] = []
    failures: list[Failure] = []
    rejected: list[RejectedVersion] = []
    skipped: list[Skipped] = []
    try:
        entries = sorted(store_dir.iterdir())
    except OSError:
        return found, failures, rejected, skipped  # no store yet, or it is gone for now: nothing to serve from it
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name) or not entry.is_dir():
            continue
        version = None
        try:
            version = _latest_version(entry)
            model = Model.from_path(entry / version)
            if model.tag.name != name:
                raise ValueError(f"its folder holds a copy of {model.tag} (a version must be its own model's)")
        except Exception as error:
            if name.startswith(MODEL_PREFIX):  # only our own names are worth a report
                failures.append(Failure(name, _reason(error), f"{name}:{version}" if version else None))
            continue
        labels = model.info.labels
        if labels.get("project") != PROJECT:
            if name.startswith(MODEL_PREFIX):  # penguin-named: never ignored silently
                skipped.append(_skipped_unlabelled(name, str(model.tag)))
            continue
        try:
            check_model_name(name.removeprefix(MODEL_PREFIX))
        except ValueError as error:
            skipped.append(Skipped(name, str(model.tag), str(error), "save it again under a valid name"))
            continue
        algorithm = labels.get("algorithm") or name.removeprefix(MODEL_PREFIX)
        others: list[tuple[str, Any]] | None = None
        if _is_rejected(model):
            others = _complete_versions(entry)
            # Not newer than `latest`: a newer folder is a save still in progress.
            served = [
                (v, m)
                for v, m in others
                if not _is_rejected(m)
                and m.info.labels.get("project") == PROJECT
                and m.info.creation_time <= model.info.creation_time
            ]
            if served:
                version, model = served[0]
                found.append(StoredModel(name, str(model.tag), algorithm, entry / version))
        else:
            found.append(StoredModel(name, str(model.tag), algorithm, entry / version))
        if list_rejected:
            for _, other in others if others is not None else _complete_versions(entry):
                if _is_rejected(other) and other.info.labels.get("project") == PROJECT:
                    rejected.append(
                        RejectedVersion(
                            name,
                            str(other.tag),
                            algorithm,
                            dict(other.info.metadata),
                            other.info.creation_time.isoformat(timespec="seconds"),
                        )
                    )
    return found, failures, rejected, skipped


def _skipped_unlabelled(name: str, tag: str) -> Skipped:
    short = name.removeprefix(MODEL_PREFIX)
    return Skipped(
        name,
        tag,
        "saved without this project's labels (not through the promotion gate), so it is not served",
        f"penguins.training.train_and_save(pipeline_or_classifier, {short!r})",
    )


def _is_rejected(model: Any) -> bool:
    return model.info.labels.get(STATUS_LABEL) == REJECTED


def _complete_versions(model_dir: Path) -> list[tuple[str, Any]]:
    """Every readable version under a model name, newest first. Unreadable ones are skipped: besides `latest`
    (which BentoML writes only after a save completed), any version folder may be a save still in progress."""
    from bentoml._internal.models.model import Model

    versions = []
    for path in model_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        try:
            model = Model.from_path(path)
        except Exception:
            continue
        if model.tag.name != model_dir.name:
            continue
        versions.append((path.name, model))
    versions.sort(key=lambda vm: (vm[1].info.creation_time, vm[0]), reverse=True)
    return versions


def _latest_version(model_dir: Path) -> str:
    """The version BentoML calls latest; BentoML writes the `latest` file only after a save completed."""
    latest = model_dir / "latest"
    if latest.is_file():
        version = latest.read_text().strip()
        # A version is one folder inside its own model's folder: never a path to another model's.
        if _VERSION.fullmatch(version) and (model_dir / version).is_dir() and not (model_dir / version).is_symlink():
            return version
        if version and not _VERSION.fullmatch(version):
            raise ValueError(f"{model_dir.name}'s 'latest' file names {version[:80]!r}, which is not a version")
    raise FileNotFoundError(f"{model_dir.name} has no complete version (no valid 'latest' file)")


# BentoML's own rule for a tag's version; no dots at the ends, so never "." or "..".
_VERSION = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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
    from bentoml._internal.models.model import Model

    model = Model.from_path(stored.path)
    metadata = dict(model.info.metadata)
    try:
        pipeline = bentoml.sklearn.load_model(model)
        classes = [str(c) for c in pipeline.classes_]
    except Exception as error:  # a pickle error says little by itself ("KeyError: 110")
        raise ValueError(f"cannot unpickle the saved pipeline ({_reason(error)})") from error
    predictor: Predictor = SklearnPredictor(pipeline)
    if compiled:
        try:
            onnx_bytes = model.custom_objects.get("onnx")
            if onnx_bytes:
                predictor = OnnxPredictor(onnx_bytes, classes)
        except Exception as error:
            raise ValueError(f"cannot open the compiled ONNX form ({_reason(error)})") from error
    explainer = None
    try:
        saved = model.custom_objects.get(EXPLAIN_OBJECT)
        if saved is not None:
            explainer = Explainer.from_saved(saved, pipeline)
    except Exception as error:
        raise ValueError(f"cannot use the saved explanation data ({_reason(error)})") from error
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
        from penguins.errors import NoModelLoaded, NotExplainable, UnknownModel

        if not self.models:
            raise NoModelLoaded()
        chosen = self.best() if requested is None else self._find(requested)
        if chosen is None:
            served = list(self.models.values())
            raise UnknownModel(requested or "", [m.name for m in served], [m.tag for m in served])
        if explainable and chosen.explainer is None:
            raise NotExplainable(chosen.tag)
        return chosen

    def _find(self, requested: str) -> LoadedModel | None:
        name, _, version = requested.partition(":")
        for model in self.models.values():
            short = model.name.removeprefix(MODEL_PREFIX)
            if name in (model.name, short, model.algorithm) and (not version or model.tag == f"{model.name}:{version}"):
                return model
        return None


@dataclass(frozen=True)
class Change:
    added: list[str]
    updated: list[dict[str, str]]
    removed: list[str]
    failed: list[Failure]
    serving: list[str]
    skipped: list[Skipped] = field(default_factory=list)


class Registry:
    """The loaded models of one worker process, cached by tag."""

    def __init__(self, store_dir: Path, compiled: bool = True):
        self.store_dir = Path(store_dir)
        self.compiled = compiled
        self.marker = self.store_dir.parent / RELOAD_MARKER
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._seen: tuple[int, int] | None = None
        self._loaded_once = False
        self.retired: dict[str, LoadedModel] = {}
        # Called with each new snapshot (the service's per-model routes follow it).
        self.listeners: list[Callable[[Snapshot], None]] = []

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def reload(self) -> Change:
        """Re-read the store now, then tell the other workers to do the same."""
        with self._lock:
            change = self._refresh()
            self._seen = self._touch_marker()
        return change

    def is_stale(self) -> bool:
        """True when never loaded or another worker reloaded since: one stat() call."""
        return not self._loaded_once or self._marker_state() != self._seen

    def sync(self) -> Snapshot:
        """Catch up with a reload another worker did."""
        if self.is_stale():
            with self._lock:
                state = self._marker_state()
                if not self._loaded_once or state != self._seen:
                    self._refresh()
                    self._seen = state
        return self._snapshot

    def _refresh(self) -> Change:
        stored, failures, rejected, skipped = scan_with_rejected(self.store_dir)
        current = self._snapshot.models
        if current and not self.store_dir.is_dir():
            # The store vanished (an unmounted volume, a folder moved away): keep serving what is loaded until it is
            # back rather than turn every request into a 503. Removing one model's folder still removes that model.
            reason = f"the model store {self.store_dir} is not there; serving the models loaded before"
            gone = Failure(STORE_FAILURE, reason)
            self._snapshot = Snapshot(current, (gone,), self._snapshot.rejected, self._snapshot.skipped)
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
                failures.append(Failure(entry.name, _reason(error), entry.tag))
        # A broken new version (half-written, unreadable, failing to load) must not take down the one that works.
        for failure in failures:
            if failure.name in current and failure.name not in models:
                models[failure.name] = current[failure.name]
        # Kept for a batch that was queued before its model was removed (it still finishes on it).
        self.retired = {n: m for n, m in current.items() if n not in models}
        self._snapshot = Snapshot(dict(sorted(models.items())), tuple(failures), tuple(rejected), tuple(skipped))
        self._loaded_once = True
        for listener in self.listeners:
            listener(self._snapshot)
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

    def _marker_state(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.marker)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _touch_marker(self) -> tuple[int, int] | None:
        # Write-then-rename: a new inode each time, so a reader never misses a change within one mtime tick.
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.marker.with_name(f".{RELOAD_MARKER}.{uuid.uuid4().hex}")
            temporary.write_text(uuid.uuid4().hex)
            os.replace(temporary, self.marker)
        except OSError:
            return None  # read-only home: this worker still reloaded; others catch up on their own reload
        return self._marker_state()
