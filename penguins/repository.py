"""The object-storage model repository (`PENGUINS_MODEL_REPOSITORY=s3://bucket/prefix`): how model versions travel
between machines.

Layout under the prefix (docs/replicas.md):

    models/<name>/<version>.bentomodel   BentoML's own export archive of the model folder (`bentoml models import`
                                         reads it), with everything the service and `explain` load
    models/<name>/<version>.json         its manifest: size, SHA-256, labels, creation time; written LAST
    generation                           the reload signal: rewritten by every reload, watched by every replica

Publishing uploads the archive with its SHA-256 (the server refuses a body that does not match), checks the stored
size, and only then writes the manifest: a version without a manifest does not exist for the replicas. Pulling
downloads an archive, checks its size and SHA-256 against the manifest, unpacks it beside the store and renames it
into place, so a local store never holds half a version; a corrupt one is reported and skipped.

Endpoint and credentials are boto3's own business (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE, AWS_DEFAULT_REGION): nothing here reads or logs them.

    python -m penguins.repository status            # what the repository holds, and what this store lacks
    python -m penguins.repository publish TAG...    # publish versions of the local store ($BENTOML_HOME)
    python -m penguins.repository publish --missing # every local penguin version the repository lacks
    python -m penguins.repository pull              # what `reload` does first: fetch what the store lacks
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from penguins.adapter.layout import read_latest, write_latest

logger = logging.getLogger(__name__)

ARCHIVE = ".bentomodel"  # BentoML's export format: an xz tar of the model folder
MANIFEST = ".json"
GENERATION = "generation"
FORMAT = "bentomodel/1"
# Files the puller keeps in the local store's root. Plain files whose names start with a dot: BentoML's own store
# listing looks only at folders there (`bentoml models list` fails on an odd folder, never on a file).
PULL_LOCK = ".penguins-pull.lock"
# Where a pulled version is unpacked before it is renamed into place: a folder in the store's root (the same file
# system, so the rename is atomic) named like a model without versions, which BentoML lists as nothing and
# scan.scan skips (not this project's prefix).
UNPACKING = "penguins.pulling-"
# Archives up to this size go up in one PUT whose SHA-256 the server checks; larger ones in verified parts.
SINGLE_PUT_BYTES = 64 * 1024 * 1024


class RepositoryError(Exception):
    """The repository cannot be used right now: unreachable, refused, misconfigured. Never carries credentials."""


@dataclass(frozen=True)
class Manifest:
    tag: str
    name: str
    version: str
    archive: str  # the archive's key in the bucket
    size: int
    sha256: str
    labels: dict[str, str]
    created: str  # the model's creation time (BentoML's), ISO 8601
    published_at: str
    published_by: str
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Manifest:
        data = json.loads(body)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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


def parse(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return match.group(1), match.group(2).strip("/")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"


class Repository:
    """One `s3://bucket/prefix`, through a boto3 client made on first use (thread-safe, shared by the worker)."""

    def __init__(self, url: str, client: Any = None):
        self.url = url
        self.bucket, self.prefix = parse(url)
        self._client = client
        self._client_lock = threading.Lock()
        # tag -> ((manifest etag, archive etag), failure): a corrupt version is not downloaded again until either
        # object changes, but it is reported on every pull.
        self._failed: dict[str, tuple[tuple[str, str], PullFailure]] = {}
        # manifest key -> (etag, manifest): each manifest is read once, not at every pull.
        self._manifests: dict[str, tuple[str, Manifest]] = {}

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # -- the client -------------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = _make_client()
            return self._client

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """botocore's exceptions, as one RepositoryError saying what failed (their messages hold no secrets)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            details = error.response.get("Error", {})
            raise RepositoryError(
                f"{doing} {self.url}: {details.get('Code', '?')} {details.get('Message', '')}".strip()
            ) from None
        except BotoCoreError as error:
            raise RepositoryError(f"{doing} {self.url}: {type(error).__name__}: {error}") from None

    # -- the reload signal ------------------------------------------------------------------------------------------

    def generation(self) -> str | None:
        """The reload signal's current value (its ETag), None when no reload was ever signalled. One HEAD request."""
        from botocore.exceptions import ClientError

        with self._errors("cannot read the reload signal of"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.key(GENERATION))["ETag"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def signal(self, by: str) -> str:
        """Start a new generation: every replica that watches this repository reloads. Returns its ETag."""
        body = json.dumps({"generation": uuid.uuid4().hex, "at": _now(), "by": by}).encode()
        with self._errors("cannot write the reload signal to"):
            return self.client.put_object(
                Bucket=self.bucket, Key=self.key(GENERATION), Body=body, ContentType="application/json"
            )["ETag"]

    # -- publishing -------------------------------------------------------------------------------------------------

    def publish(self, model_path: Path) -> Manifest:
        """Publish the model folder at `model_path` (a version in a BentoML store). A version is immutable: when its
        manifest exists already, that manifest is returned and nothing is uploaded."""
        from bentoml import Model

        model = Model.from_path(model_path)
        name, version = model.tag.name, str(model.tag.version)
        archive_key = self.key("models", name, version + ARCHIVE)
        manifest_key = self.key("models", name, version + MANIFEST)
        existing = self._read_manifest(manifest_key)
        if existing is not None:
            return existing
        with tempfile.TemporaryDirectory(prefix="penguins-publish-") as scratch:
            archive = Path(model.export(str(Path(scratch) / (name + "-" + version + ARCHIVE))))
            size, digest = archive.stat().st_size, _sha256(archive)
            with self._errors(f"cannot upload {model.tag} to"):
                if size <= SINGLE_PUT_BYTES:
                    with archive.open("rb") as body:
                        self.client.put_object(
                            Bucket=self.bucket,
                            Key=archive_key,
                            Body=body,
                            ChecksumSHA256=_b64(digest),
                            ContentType="application/x-xz",
                        )
                else:
                    from boto3.s3.transfer import TransferConfig

                    self.client.upload_file(
                        str(archive),
                        self.bucket,
                        archive_key,
                        ExtraArgs={"ChecksumAlgorithm": "SHA256", "ContentType": "application/x-xz"},
                        Config=TransferConfig(multipart_threshold=SINGLE_PUT_BYTES),
                    )
                stored = self.client.head_object(Bucket=self.bucket, Key=archive_key)
            if stored["ContentLength"] != size:
                raise RepositoryError(
                    f"{model.tag}: {self.url} stored {stored['ContentLength']} bytes of a {size}-byte archive"
                )
        manifest = Manifest(
            tag=str(model.tag),
            name=name,
            version=version,
            archive=archive_key,
            size=size,
            sha256=digest,
            labels=dict(model.info.labels),
            created=model.info.creation_time.isoformat(),
            published_at=_now(),
            published_by=host_name(),
        )
        body = manifest.to_json()
        with self._errors(f"cannot write the manifest of {model.tag} to"):
            # Last: from here on the version exists for every replica.
            self.client.put_object(
                Bucket=self.bucket,
                Key=manifest_key,
                Body=body,
                ChecksumSHA256=_b64(hashlib.sha256(body).hexdigest()),
                ContentType="application/json",
            )
        logger.info("published %s to %s (%d bytes)", manifest.tag, self.url, size)
        return manifest

    def _read_manifest(self, key: str) -> Manifest | None:
        from botocore.exceptions import ClientError

        with self._errors("cannot read"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        try:
            return Manifest.from_json(body)
        except Exception:
            return None  # an unreadable manifest: publishing writes a good one over it

    # -- listing and pulling ----------------------------------------------------------------------------------------

    def listing(self) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        """(tag -> (manifest key, manifest etag), tag -> archive etag) for everything under models/."""
        manifests: dict[str, tuple[str, str]] = {}
        archives: dict[str, str] = {}
        root = self.key("models") + "/"
        with self._errors("cannot list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for item in page.get("Contents", []):
                    parts = item["Key"][len(root) :].split("/")
                    if len(parts) != 2:
                        continue
                    name, file = parts
                    version, suffix = os.path.splitext(file)
                    if not version:
                        continue
                    if suffix == MANIFEST:
                        manifests[f"{name}:{version}"] = (item["Key"], item["ETag"])
                    elif suffix == ARCHIVE:
                        archives[f"{name}:{version}"] = item["ETag"]
        return manifests, archives

    def manifests(self) -> tuple[list[tuple[Manifest, str]], list[str], list[PullFailure]]:
        """Every readable manifest with its etag, newest model first; archives without one; unreadable manifests."""
        listed, archives = self.listing()
        found, broken = [], []
        for tag, (key, etag) in listed.items():
            cached = self._manifests.get(key)
            if cached is not None and cached[0] == etag:
                found.append((cached[1], etag))
                continue
            with self._errors("cannot read"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            try:
                manifest = Manifest.from_json(body)
                if manifest.tag != tag:
                    raise ValueError(f"it names {manifest.tag}")
            except Exception as error:
                broken.append(PullFailure(tag.split(":")[0], tag, f"unreadable manifest in {self.url} ({error})"))
                continue
            self._manifests[key] = (etag, manifest)
            found.append((manifest, etag))
        found.sort(key=lambda m: (m[0].created, m[0].version), reverse=True)
        incomplete = sorted(set(archives) - set(listed))
        return found, incomplete, broken

    def pull(self, store_dir: Path) -> PullResult:
        """Fetch into `store_dir` (a BentoML store) what serving needs and the store lacks: per model name, its
        newest version whose status is not rejected, and any newer (rejected) ones, so the gate's decisions and
        BentoML's `latest` are the same here as where they were made. A version that fails verification is
        reported and skipped, so the next older one is fetched instead. One puller at a time per store."""
        from penguins.names import REJECTED, STATUS_LABEL

        result = PullResult()
        found, result.incomplete, broken = self.manifests()
        result.failures.extend(broken)
        by_name: dict[str, list[tuple[Manifest, str]]] = {}
        for manifest, etag in found:
            by_name.setdefault(manifest.name, []).append((manifest, etag))
        try:
            lock = _lock(store_dir)
        except OSError as error:
            result.store_error = f"cannot write into the local store {store_dir} ({_reason(error)}): nothing pulled"
            return result
        with lock:
            _clean_unpacking(store_dir)
            for _name, versions in sorted(by_name.items()):
                for manifest, etag in versions:  # newest first
                    if not _present(store_dir, manifest):
                        failure = self._pull_one(store_dir, manifest, etag)
                        if failure is not None:
                            result.failures.append(failure)
                            continue
                        result.pulled.append(manifest.tag)
                    if manifest.labels.get(STATUS_LABEL) != REJECTED:
                        break  # the version served; older ones are history
        return result

    def _pull_one(self, store_dir: Path, manifest: Manifest, manifest_etag: str) -> PullFailure | None:
        from botocore.exceptions import ClientError

        remembered = self._failed.get(manifest.tag)
        archive_etag = ""
        with self._errors(f"cannot read {manifest.archive} of"):
            try:
                archive_etag = self.client.head_object(Bucket=self.bucket, Key=manifest.archive)["ETag"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        if remembered is not None and remembered[0] == (manifest_etag, archive_etag):
            return remembered[1]
        failure = None
        if not archive_etag:
            failure = PullFailure(manifest.name, manifest.tag, f"its archive is missing from {self.url}: skipped")
        else:
            failure = self._download(store_dir, manifest)
        if failure is None:
            self._failed.pop(manifest.tag, None)
            logger.info("pulled %s from %s", manifest.tag, self.url)
        else:
            self._failed[manifest.tag] = ((manifest_etag, archive_etag), failure)
            logger.error("model repository: %s", failure.reason)
        return failure

    def _download(self, store_dir: Path, manifest: Manifest) -> PullFailure | None:
        def failed(reason: str) -> PullFailure:
            return PullFailure(manifest.name, manifest.tag, f"{manifest.tag} in {self.url}: {reason}; skipped")

        part = store_dir / f".penguins-pull-{uuid.uuid4().hex}.part"
        unpacked = store_dir / f"{UNPACKING}{uuid.uuid4().hex}"
        try:
            with self._errors(f"cannot download {manifest.tag} from"):
                self.client.download_file(self.bucket, manifest.archive, str(part))
            size, digest = part.stat().st_size, _sha256(part)
            if size != manifest.size or digest != manifest.sha256:
                return failed(
                    f"the archive does not match its manifest ({size} bytes, SHA-256 {digest[:12]}..., the manifest "
                    f"says {manifest.size} bytes, {manifest.sha256[:12]}...): corrupt or still being replaced"
                )
            unpacked.mkdir(mode=0o700)
            try:
                with tarfile.open(part, "r:*") as archive:
                    unpack(archive, unpacked)
                from bentoml import Model

                model = Model.from_path(unpacked)
            except Exception as error:
                return failed(f"the archive cannot be unpacked as a BentoML model ({_reason(error)})")
            if str(model.tag) != manifest.tag:
                return failed(f"the archive holds {model.tag}, not the version its manifest names")
            name_dir = store_dir / manifest.name
            name_dir.mkdir(exist_ok=True)
            target = name_dir / manifest.version
            if target.exists():
                return None  # saved or pulled here meanwhile
            os.rename(unpacked, target)
            _update_latest(name_dir, manifest.version, model.info.creation_time)
            return None
        finally:
            part.unlink(missing_ok=True)
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


def _present(store_dir: Path, manifest: Manifest) -> bool:
    return (store_dir / manifest.name / manifest.version / "model.yaml").is_file()


def _update_latest(name_dir: Path, version: str, created: datetime) -> None:
    """BentoML's rule: `latest` names the newest version by creation time. Written by rename, never half."""
    from bentoml import Model

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


def _lock(store_dir: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the store for pulling; OSError when the store cannot be written (read-only)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(store_dir / PULL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    return _locked(handle)


def _clean_unpacking(store_dir: Path) -> None:
    """Unpacking folders of a puller that died (we hold the lock: none is in use)."""
    for path in store_dir.glob(f"{UNPACKING}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in store_dir.glob(".penguins-pull-*.part"):
        path.unlink(missing_ok=True)


def _make_client() -> Any:
    import boto3
    from botocore.config import Config

    # Bounded waits: an unreachable repository must cost a reload seconds, not minutes (botocore's defaults are
    # 60 s per connect and read, with retries). Two attempts per request at most; the periodic check retries.
    config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
    session = boto3.session.Session()
    client = session.client("s3", config=config)
    if not (client.meta.endpoint_url or "").rstrip("/").endswith(".amazonaws.com"):
        # An S3-compatible server at its own endpoint (MinIO, SeaweedFS, `http://s3:8333` in compose): path-style
        # addressing, since `bucket.s3` would not resolve.
        client = session.client("s3", config=config.merge(Config(s3={"addressing_style": "path"})))
    return client


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _b64(hexdigest: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- the module's interface: the configured repository, or nothing --------------------------------------------------

_configured: dict[str, Repository] = {}


def configured() -> Repository | None:
    """The repository PENGUINS_MODEL_REPOSITORY names (one per process), or None when it is unset."""
    from penguins.settings import get_settings

    url = get_settings().model_repository
    if url is None:
        return None
    if url not in _configured:
        _configured[url] = Repository(url)
    return _configured[url]


def publish(tag: str, store_dir: Path | None = None) -> Manifest | None:
    """Publish one saved version (`name:version`) of the local store to the configured repository; None when no
    repository is configured. Raises RepositoryError when it cannot be published: the version then exists only
    in the local store (`python -m penguins.repository publish --missing` catches up)."""
    repository = configured()
    if repository is None:
        return None
    from penguins.names import default_store_dir

    name, _, version = tag.partition(":")
    path = (store_dir or default_store_dir()) / name / version
    try:
        return repository.publish(path)
    except RepositoryError as error:
        raise RepositoryError(
            f"{tag} is saved in the local store but NOT published: {error}. Once the repository answers, run "
            "`python -m penguins.repository publish --missing`"
        ) from None


def publish_missing(store_dir: Path | None = None) -> list[Manifest]:
    """Publish every version of this project's models in the local store that the repository lacks."""
    repository = configured()
    if repository is None:
        return []
    from penguins.names import default_store_dir
    from penguins.scan import local_versions

    listed, _ = repository.listing()
    local = local_versions(store_dir or default_store_dir())
    return [repository.publish(path) for tag, path in local if tag not in listed]


def pull(store_dir: Path | None = None) -> PullResult | None:
    """Fetch into the local store what serving needs and it lacks (what every reload does first); None when no
    repository is configured."""
    repository = configured()
    if repository is None:
        return None
    from penguins.names import default_store_dir

    return repository.pull(store_dir or default_store_dir())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m penguins.repository", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="what the repository holds and what the local store lacks")
    publishing = commands.add_parser("publish", help="publish local versions")
    publishing.add_argument("tags", nargs="*", metavar="TAG")
    publishing.add_argument("--missing", action="store_true", help="every local penguin version not published")
    commands.add_parser("pull", help="fetch what the local store lacks")
    args = parser.parse_args(argv)
    repository = configured()
    if repository is None:
        parser.error("PENGUINS_MODEL_REPOSITORY is not set")
    from penguins.names import default_store_dir

    store = default_store_dir()
    try:
        if args.command == "status":
            found, incomplete, broken = repository.manifests()
            for manifest, _ in found:
                here = "here" if _present(store, manifest) else "missing here"
                status = manifest.labels.get("status", "")
                print(f"{manifest.tag}  {status:<9} {manifest.size:>10} bytes  {manifest.created}  {here}")
            for tag in incomplete:
                print(f"{tag}  incomplete (an archive without a manifest: never pulled)")
            for failure in broken:
                print(f"{failure.tag}  {failure.reason}")
            print(f"reload signal: {repository.generation() or 'never written'}")
        elif args.command == "publish":
            if not args.tags and not args.missing:
                parser.error("name TAGs or pass --missing")
            done = publish_missing(store) if args.missing else [publish(tag, store) for tag in args.tags]
            for manifest in done:
                print(f"published {manifest.tag} ({manifest.size} bytes, sha256 {manifest.sha256})")
        else:
            result = repository.pull(store)
            for tag in result.pulled:
                print(f"pulled {tag}")
            for failure in result.failures:
                print(f"FAILED {failure.tag}: {failure.reason}")
            if result.store_error:
                print(result.store_error)
                return 1
            return 1 if result.failures else 0
    except RepositoryError as error:
        print(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
