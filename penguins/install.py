"""Pulling into BentoML's local model store: which published versions serving needs, their download checked
against its manifest, unpacked beside the store and renamed into place (a local store never holds half a version),
`latest` kept as BentoML's rule has it. One puller at a time per store. The bucket's side (listing, manifests, the
download itself) is penguins/bucket.py's `Repository`, which this uses without importing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from penguins.adapter.layout import read_latest, write_latest
from penguins.errors import reason
from penguins.names import REJECTED, STATUS_LABEL

logger = logging.getLogger(__name__)

# Files the puller keeps in the local store's root. Plain files whose names start with a dot: BentoML's own store
# listing looks only at folders there (`bentoml models list` fails on an odd folder, never on a file).
PULL_LOCK = ".penguins-pull.lock"
PART_PREFIX = ".penguins-pull-"
# Where a pulled version is unpacked before it is renamed into place: a folder in the store's root (the same file
# system, so the rename is atomic) named like a model without versions, which BentoML lists as nothing and
# scan.scan skips (not this project's prefix).
UNPACKING = "penguins.pulling-"


@dataclass(frozen=True)
class PullFailure:
    name: str
    tag: str
    reason: str


@dataclass
class PullResult:
    pulled: list[str] = field(default_factory=list)
    failures: list[PullFailure] = field(default_factory=list)
    # Archives without a manifest: an upload in progress, or one that was interrupted. Never pulled.
    incomplete: list[str] = field(default_factory=list)
    # Why nothing could be written into the local store (read-only), if so.
    store_error: str | None = None


class Puller:
    """One repository's pulls (`repository`: a bucket.Repository), remembering the versions that failed."""

    def __init__(self, repository: Any):
        self.repository = repository
        # tag -> ((manifest etag, archive etag), failure): a corrupt version is not downloaded again until either
        # object changes, but it is reported on every pull.
        self._failed: dict[str, tuple[tuple[str, str], PullFailure]] = {}

    def pull(self, store_dir: Path) -> PullResult:
        """Fetch into `store_dir` (a BentoML store) what serving needs and the store lacks: per model name, its
        newest version whose status is not rejected, and any newer (rejected) ones, so the gate's decisions and
        BentoML's `latest` are the same here as where they were made. A version that fails verification is
        reported and skipped, so the next older one is fetched instead. One puller at a time per store."""
        result = PullResult()
        found, result.incomplete, broken = self.repository.manifests()
        result.failures.extend(broken)
        by_name: dict[str, list[tuple[Any, str]]] = {}
        for manifest, etag in found:
            by_name.setdefault(manifest.name, []).append((manifest, etag))
        try:
            held = lock(store_dir)
        except OSError as error:
            result.store_error = f"cannot write into the local store {store_dir} ({reason(error)}): nothing pulled"
            return result
        with held:
            clean_unpacking(store_dir)
            for _name, versions in sorted(by_name.items()):
                for manifest, etag in versions:  # newest first
                    if not present(store_dir, manifest.name, manifest.version):
                        failure = self._pull_one(store_dir, manifest, etag)
                        if failure is not None:
                            result.failures.append(failure)
                            continue
                        result.pulled.append(manifest.tag)
                    if manifest.labels.get(STATUS_LABEL) != REJECTED:
                        break  # the version served; older ones are history
        return result

    def _pull_one(self, store_dir: Path, manifest: Any, manifest_etag: str) -> PullFailure | None:
        url = self.repository.url
        remembered = self._failed.get(manifest.tag)
        archive_etag = self.repository.archive_etag(manifest.archive)
        if remembered is not None and remembered[0] == (manifest_etag, archive_etag):
            return remembered[1]
        failure = None
        if not archive_etag:
            failure = PullFailure(manifest.name, manifest.tag, f"its archive is missing from {url}: skipped")
        else:
            failure = self._download(store_dir, manifest)
        if failure is None:
            self._failed.pop(manifest.tag, None)
            logger.info("pulled %s from %s", manifest.tag, url)
        else:
            self._failed[manifest.tag] = ((manifest_etag, archive_etag), failure)
            logger.error("model repository: %s", failure.reason)
        return failure

    def _download(self, store_dir: Path, manifest: Any) -> PullFailure | None:
        """Download the archive beside the store, check it against its manifest, and install it."""
        part = store_dir / f"{PART_PREFIX}{uuid.uuid4().hex}.part"
        try:
            self.repository.download(manifest.archive, part, manifest.tag)
            size, digest = part.stat().st_size, sha256_of(part)
            if size != manifest.size or digest != manifest.sha256:
                why: str | None = (
                    f"the archive does not match its manifest ({size} bytes, SHA-256 {digest[:12]}..., the manifest "
                    f"says {manifest.size} bytes, {manifest.sha256[:12]}...): corrupt or still being replaced"
                )
            else:
                why = install(part, store_dir, manifest.tag)
        finally:
            part.unlink(missing_ok=True)
        if why is None:
            return None
        return PullFailure(manifest.name, manifest.tag, f"{manifest.tag} in {self.repository.url}: {why}; skipped")


def present(store_dir: Path, name: str, version: str) -> bool:
    """Whether the store holds this version already (saved here, or pulled before)."""
    return (store_dir / name / version / "model.yaml").is_file()


def install(part: Path, store_dir: Path, tag: str) -> str | None:
    """Unpack the checked archive at `part` and rename it into place as `tag`; the reason it cannot be, or None.
    A version saved or pulled here meanwhile counts as installed."""
    name, _, version = tag.partition(":")
    unpacked = store_dir / f"{UNPACKING}{uuid.uuid4().hex}"
    try:
        unpacked.mkdir(mode=0o700)
        try:
            with tarfile.open(part, "r:*") as archive:
                unpack(archive, unpacked)
            from bentoml import Model  # lazily: importing bentoml costs seconds

            model = Model.from_path(unpacked)
        except Exception as error:
            return f"the archive cannot be unpacked as a BentoML model ({reason(error)})"
        if str(model.tag) != tag:
            return f"the archive holds {model.tag}, not the version its manifest names"
        name_dir = store_dir / name
        name_dir.mkdir(exist_ok=True)
        target = name_dir / version
        if target.exists():
            return None  # saved or pulled here meanwhile
        os.rename(unpacked, target)
        _update_latest(name_dir, version, model.info.creation_time)
        return None
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def unpack(archive: tarfile.TarFile, target: Path) -> None:
    """Unpack regular files and folders only, all inside `target`; refuse anything else (links, devices, a path
    outside). What tarfile's "data" filter does, which Python 3.11 lacks before 3.11.4 (Debian 12 has 3.11.2)."""
    root = target.resolve()
    for member in archive.getmembers():
        path = (root / member.name).resolve()
        if path != root and root not in path.parents:
            raise ValueError(f"{member.name!r} points outside the archive")
        if member.isdir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif member.isfile():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has a body
            with source, path.open("wb") as out:
                shutil.copyfileobj(source, out)
        else:
            raise ValueError(f"{member.name!r} is neither a file nor a folder")


def _update_latest(name_dir: Path, version: str, created: datetime) -> None:
    """BentoML's rule: `latest` names the newest version by creation time. Written by rename, never half."""
    from bentoml import Model  # lazily: importing bentoml costs seconds

    try:
        current = read_latest(name_dir)
        if current and current != version and Model.from_path(name_dir / current).info.creation_time > created:
            return
    except Exception:
        pass  # no or an unusable `latest`: this version becomes it
    write_latest(name_dir, version)


@contextlib.contextmanager
def _locked(handle: int) -> Iterator[None]:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def lock(store_dir: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the store for pulling; OSError when the store cannot be written (read-only)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(store_dir / PULL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    return _locked(handle)


def clean_unpacking(store_dir: Path) -> None:
    """Unpacking folders and downloads of a puller that died (we hold the lock: none is in use)."""
    for path in store_dir.glob(f"{UNPACKING}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in store_dir.glob(f"{PART_PREFIX}*.part"):
        path.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
