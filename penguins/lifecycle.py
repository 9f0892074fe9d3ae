"""The store's life cycle as `penguins models` and `penguins prune` see it: every version of every penguin model
(served, rejected by the gate, not served, skipped, failed) with its predictor, and which versions pruning deletes.

Pruning never deletes the version a model name serves, nor the one BentoML's `latest` names (the store would have
no `latest` then); in the model repository (PENGUINS_MODEL_REPOSITORY) it never deletes the newest version not
rejected, the one every replica's pull serves.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from penguins.adapter.layout import read_latest
from penguins.bucket import ARCHIVE, MANIFEST, RepositoryError
from penguins.names import REJECTED as REJECTED_LABEL
from penguins.names import STATUS_LABEL
from penguins.scan import local_versions, scan_with_rejected

SERVED = "served"
REJECTED = "rejected"
NOT_SERVED = "not served"
SKIPPED = "skipped"
FAILED = "failed"
STORE = "store"
REPOSITORY = "repository"


@dataclass(frozen=True)
class Version:
    """One version in the local store (or one penguin-named entry that is not ours to serve), as listed."""

    name: str
    tag: str
    status: str  # SERVED, REJECTED, NOT_SERVED, SKIPPED or FAILED
    why: str  # the gate's reason, why it is not served, skipped or failed ("" when served)
    created: str = ""
    predictor: str = ""  # "onnx" or "sklearn" ("" when it could not be read)
    not_onnx: str = ""  # why the ONNX form is not served: the model's compiled.reason
    test_accuracy: float | None = None
    latest: bool = False  # the version BentoML's `latest` names
    path: Path | None = None


@dataclass(frozen=True)
class Planned:
    """One version pruning looked at: where it is, whether it goes, and why."""

    where: str  # STORE or REPOSITORY
    name: str
    tag: str
    status: str
    delete: bool
    why: str


def inventory(store_dir: Path) -> list[Version]:
    """Every version of this project's models in the store (newest first per name), then the penguin-named entries
    the service skips and the ones it cannot read."""
    from bentoml import Model  # lazily: importing bentoml costs seconds (and `penguins --store` sets its home)

    stored, failures, _, skipped = scan_with_rejected(store_dir)
    served = {m.name: m.tag for m in stored}
    versions: list[Version] = []
    for tag, folder in local_versions(store_dir):  # by name, newest first
        try:
            model = Model.from_path(folder)
        except Exception as error:  # read a moment ago by local_versions: a version removed meanwhile
            versions.append(Version(tag.split(":")[0], tag, FAILED, f"{type(error).__name__}: {error}", path=folder))
            continue
        versions.append(_version(model, folder, served))
    versions += [Version(s.name, s.tag or "", SKIPPED, f"{s.reason}; to serve it: {s.fix}") for s in skipped]
    versions += [Version(f.name, f.tag or "", FAILED, f.reason) for f in failures]
    return versions


def _version(model: Any, folder: Path, served: dict[str, str]) -> Version:
    name, tag = model.tag.name, str(model.tag)
    labels, metadata = model.info.labels, dict(model.info.metadata)
    gate = metadata.get("gate") if isinstance(metadata.get("gate"), dict) else {}
    if served.get(name) == tag:
        status, why = SERVED, str(gate.get("reason") or "")
    elif labels.get("status") == REJECTED:
        status, why = REJECTED, str(gate.get("reason") or "labelled status=rejected")
    elif name in served:
        status, why = NOT_SERVED, f"{served[name]} is served"
    else:
        status, why = NOT_SERVED, "no version of this name is served (BentoML's latest is rejected or unreadable)"
    compiled = metadata.get("compiled") if isinstance(metadata.get("compiled"), dict) else {}
    onnx = compiled.get("format") == "onnx"
    not_onnx = "" if onnx else str(compiled.get("reason") or "saved without an ONNX form")
    accuracy = metadata.get("test_accuracy")
    return Version(
        name,
        tag,
        status,
        why,
        model.info.creation_time.isoformat(timespec="seconds"),
        "onnx" if onnx else "sklearn",
        not_onnx,
        float(accuracy) if isinstance(accuracy, int | float) else None,
        read_latest(folder.parent) == folder.name,
        folder,
    )


def plan_store(versions: list[Version], keep: int) -> list[Planned]:
    """Per model name, keep the `keep` newest versions, the served one and BentoML's `latest`; the rest go.
    Skipped and failed entries are never touched."""
    if keep < 0:
        raise ValueError(f"--keep must be 0 or more, got {keep}")
    planned: list[Planned] = []
    rank: dict[str, int] = {}
    for v in versions:
        if v.status in (SKIPPED, FAILED):
            continue
        rank[v.name] = rank.get(v.name, 0) + 1
        if v.status == SERVED:
            reason, delete = "served: never pruned", False
        elif v.latest:
            reason, delete = "BentoML's latest: never pruned", False
        elif rank[v.name] <= keep:
            reason, delete = f"one of the {keep} newest", False
        else:
            reason, delete = f"older than the {keep} newest ({v.status}{': ' + v.why if v.why else ''})", True
        planned.append(Planned(STORE, v.name, v.tag, v.status, delete, reason))
    return planned


def plan_repository(repository: Any, keep: int) -> list[Planned]:
    """The same rule over what the model repository holds: per name the `keep` newest, and the newest version not
    rejected (what every replica's pull serves)."""
    found, _, _ = repository.manifests()  # newest first
    planned: list[Planned] = []
    rank: dict[str, int] = {}
    served: set[str] = set()
    for manifest, _etag in found:
        name = manifest.name
        rank[name] = rank.get(name, 0) + 1
        rejected = manifest.labels.get(STATUS_LABEL) == REJECTED_LABEL
        status = REJECTED if rejected else NOT_SERVED
        if not rejected and name not in served:
            served.add(name)
            status, reason, delete = SERVED, "what a pull serves: never pruned", False
        elif rank[name] <= keep:
            reason, delete = f"one of the {keep} newest", False
        else:
            reason, delete = f"older than the {keep} newest ({status})", True
        planned.append(Planned(REPOSITORY, name, manifest.tag, status, delete, reason))
    return planned


def delete_local(version_path: Path) -> None:
    """Remove one version folder from the store (never the one `latest` names: the plan keeps it)."""
    shutil.rmtree(version_path)


def delete_remote(repository: Any, tag: str) -> None:
    """Remove one version from the repository: its manifest first (without it the version no longer exists for any
    replica), then its archive. Uses only the repository's public surface (client, bucket, key)."""
    from botocore.exceptions import BotoCoreError, ClientError  # lazily, as boto3: only a repository needs it

    name, _, version = tag.partition(":")
    try:
        for suffix in (MANIFEST, ARCHIVE):
            repository.client.delete_object(
                Bucket=repository.bucket, Key=repository.key("models", name, version + suffix)
            )
    except (BotoCoreError, ClientError) as error:
        raise RepositoryError(f"cannot delete {tag} from {repository.url}: {type(error).__name__}: {error}") from None
