"""The model store read without trusting it to be clean: each model name of ours, the version the promotion gate's
rule serves, what is rejected or skipped and why. Reads model.yaml only; loading is penguins.loaded's."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass as answer_record

from penguins.adapter.layout import LATEST, read_latest
from penguins.errors import reason
from penguins.names import MODEL_PREFIX, PROJECT, REJECTED, STATUS_LABEL, check_model_name

STORE_FAILURE = "model store"
REPOSITORY_FAILURE = "model repository"


# Failure and Skipped are also what `models` and `reload` answer (pydantic dataclasses: one type per concept).
@answer_record(frozen=True)
class Failure:
    """A store entry that could not be served, and why."""

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


@answer_record(frozen=True)
class Skipped:
    """A penguin-named model that is not served, why, and the one call that would serve it."""

    name: str
    tag: str | None
    reason: str
    fix: str = Field(description="The call that would serve it")


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
    found: list[StoredModel] = []
    failures: list[Failure] = []
    for entry in _readable_entries(store_dir, failures, []):
        served = entry.served()
        if served is not None:
            found.append(entry.stored(served))
    return found, failures


def scan_with_rejected(
    store_dir: Path,
) -> tuple[list[StoredModel], list[Failure], list[RejectedVersion], list[Skipped]]:
    """`scan`, plus every version labelled rejected (newest first per name), and the penguin-named models that are
    not served (saved some other way, or under a name that cannot be a route)."""
    found: list[StoredModel] = []
    failures: list[Failure] = []
    rejected: list[RejectedVersion] = []
    skipped: list[Skipped] = []
    for entry in _readable_entries(store_dir, failures, skipped):
        served = entry.served()
        if served is not None:
            found.append(entry.stored(served))
        rejected += [
            RejectedVersion(
                entry.name,
                str(model.tag),
                entry.algorithm,
                dict(model.info.metadata),
                model.info.creation_time.isoformat(timespec="seconds"),
            )
            for model in rejected_versions(entry.history)
        ]
    return found, failures, rejected, skipped


def version_to_serve(latest: tuple[str, Any], history: Callable[[], list[tuple[str, Any]]]) -> tuple[str, Any] | None:
    """The gate's rule for what a model name serves: BentoML's `latest` unless the gate rejected it; then the newest
    complete version of ours it did not reject, no newer than `latest` (a newer folder is a save still in
    progress); None when there is none. `history`: every complete version, newest first (read only if needed)."""
    version, model = latest
    if not _is_rejected(model):
        return latest
    newest = model.info.creation_time
    return next(
        ((v, m) for v, m in history() if not _is_rejected(m) and _is_ours(m) and m.info.creation_time <= newest), None
    )


def rejected_versions(history: list[tuple[str, Any]]) -> list[Any]:
    """The versions of ours the gate rejected, in `history`'s order (newest first)."""
    return [model for _, model in history if _is_rejected(model) and _is_ours(model)]


@dataclass(frozen=True)
class _Entry:
    """A model name in the store whose `latest` version is readable, ours and routable."""

    name: str
    path: Path
    algorithm: str
    latest: tuple[str, Any]  # (version folder, bentoml.Model)

    @cached_property
    def history(self) -> list[tuple[str, Any]]:
        """Every complete version, newest first: read once, and only when a rule needs it."""
        return _complete_versions(self.path)

    def served(self) -> tuple[str, Any] | None:
        return version_to_serve(self.latest, lambda: self.history)

    def stored(self, served: tuple[str, Any]) -> StoredModel:
        version, model = served
        return StoredModel(self.name, str(model.tag), self.algorithm, self.path / version)


def _read_model(path: Path) -> Any:
    """`bentoml.Model.from_path`, remembered while the version's model.yaml is the same file unchanged: BentoML parses
    it with pure-Python YAML (tens of ms each), and every scan reads every name's `latest`, and sometimes all its
    versions. The scan reads only `info`; load() reads the model afresh."""
    from bentoml import Model

    try:
        stat = (path / "model.yaml").stat()
    except OSError:
        return Model.from_path(path)  # BentoML's own error for a version without one
    return _parsed_model(path, (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@lru_cache(maxsize=1024)
def _parsed_model(path: Path, signature: tuple[int, ...]) -> Any:
    """`signature` (the file's state) is only part of the cache key: a changed file is a new entry."""
    from bentoml import Model

    return Model.from_path(path)


def _readable_entries(store_dir: Path, failures: list[Failure], skipped: list[Skipped]) -> Iterator[_Entry]:
    """Each model name of ours in the store, its `latest` read once; the others reported into `failures` (our names
    that cannot be read, or a store that cannot be) and `skipped` (penguin-named models that are not ours to serve)."""
    try:
        entries = sorted(store_dir.iterdir())
    except FileNotFoundError:
        return  # no store yet, or gone for now (the registry keeps what it loaded)
    except OSError as error:  # permission denied, a stale mount: a failure, never "the store is empty"
        failures.append(Failure(STORE_FAILURE, f"cannot read the model store {store_dir} ({reason(error)})"))
        return
    for entry in entries:
        if not entry.name.startswith(".") and re.fullmatch(r"[a-z0-9][a-z0-9._-]*", entry.name):
            found = _entry(entry, failures, skipped)
            if found is not None:
                yield found


def _entry(entry: Path, failures: list[Failure], skipped: list[Skipped]) -> _Entry | None:
    """One folder of the store as a model of ours to serve, or None (reported when its name is a penguin's)."""
    name = entry.name
    version = None
    try:
        if not entry.is_dir():
            return None
        version = _latest_version(entry)
        model = _read_model(entry / version)
        if model.tag.name != name:
            raise ValueError(f"its folder holds a copy of {model.tag} (a version must be its own model's)")
    except Exception as error:
        if name.startswith(MODEL_PREFIX):  # only our own names are worth a report
            failures.append(Failure(name, reason(error), f"{name}:{version}" if version else None))
        return None
    if not _is_ours(model):
        if name.startswith(MODEL_PREFIX):  # penguin-named: never ignored silently
            skipped.append(_skipped_unlabelled(name, str(model.tag)))
        return None
    try:
        check_model_name(name.removeprefix(MODEL_PREFIX))
    except ValueError as error:
        skipped.append(Skipped(name, str(model.tag), str(error), "save it again under a valid name"))
        return None
    algorithm = model.info.labels.get("algorithm") or name.removeprefix(MODEL_PREFIX)
    return _Entry(name, entry, algorithm, (version, model))


def _skipped_unlabelled(name: str, tag: str) -> Skipped:
    short = name.removeprefix(MODEL_PREFIX)
    return Skipped(
        name,
        tag,
        "saved without this project's labels (not through the promotion gate)",
        f"penguins.training.train_and_save(pipeline_or_classifier, {short!r})",
    )


def _is_rejected(model: Any) -> bool:
    return model.info.labels.get(STATUS_LABEL) == REJECTED


def _is_ours(model: Any) -> bool:
    return model.info.labels.get("project") == PROJECT


def _complete_versions(model_dir: Path) -> list[tuple[str, Any]]:
    """Every readable version under a model name, newest first. Unreadable ones are skipped: besides `latest`
    (which BentoML writes only after a save completed), any version folder may be a save still in progress."""
    versions = []
    for path in model_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        try:
            model = _read_model(path)
        except Exception:
            continue
        if model.tag.name != model_dir.name:
            continue
        versions.append((path.name, model))
    versions.sort(key=lambda vm: (vm[1].info.creation_time, vm[0]), reverse=True)
    return versions


def local_versions(store_dir: Path) -> Iterator[tuple[str, Path]]:
    """(tag, folder) of every readable version of this project's models in a store (what publishing may send)."""
    try:
        entries = sorted(store_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(MODEL_PREFIX) or not entry.is_dir():
            continue
        for version, model in _complete_versions(entry):
            if _is_ours(model):
                yield str(model.tag), entry / version


def _latest_version(model_dir: Path) -> str:
    """The version BentoML calls latest; BentoML writes the `latest` file only after a save completed."""
    version = read_latest(model_dir) if (model_dir / LATEST).is_file() else None
    if version is not None:
        # A version is one folder inside its own model's folder: never a path to another model's.
        if _VERSION.fullmatch(version) and (model_dir / version).is_dir() and not (model_dir / version).is_symlink():
            return version
        if version and not _VERSION.fullmatch(version):
            raise ValueError(f"{model_dir.name}'s 'latest' file names {version[:80]!r}, which is not a version")
    raise FileNotFoundError(f"{model_dir.name} has no complete version (no valid 'latest' file)")


# BentoML's own rule for a tag's version; no dots at the ends, so never "." or "..".
_VERSION = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")


def store_is_there(store_dir: Path) -> bool:
    """The store's folder exists and can be looked at (False, not an error, when it cannot)."""
    try:
        return store_dir.is_dir()
    except OSError:
        return False
