"""The object-storage model repository's protocol (`s3://bucket/prefix`): its keys, manifests, the reload signal,
listing, publishing a version and fetching one, through boto3.

Layout under the prefix (docs/replicas.md):

    models/<name>/<version>.bentomodel   BentoML's own export archive of the model folder (`bentoml models import`
                                         reads it), with everything the service and `explain` load
    models/<name>/<version>.json         its manifest: size, SHA-256, labels, creation time; written LAST
    generation                           the reload signal: rewritten by every reload, watched by every replica

Publishing uploads the archive with its SHA-256 (the server refuses a body that does not match), checks the stored
size, and only then writes the manifest: a version without a manifest does not exist for the replicas. Pulling
downloads an archive and checks its size and SHA-256 against the manifest; penguins/install.py writes it into the
local store. A corrupt one is reported and skipped.

Endpoint and credentials are boto3's own business (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE, AWS_DEFAULT_REGION): nothing here reads or logs them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from penguins.install import Puller, PullFailure, PullResult, sha256_of

logger = logging.getLogger(__name__)

ARCHIVE = ".bentomodel"  # BentoML's export format: an xz tar of the model folder
MANIFEST = ".json"
GENERATION = "generation"
FORMAT = "bentomodel/1"
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


def parse(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return match.group(1), match.group(2).strip("/")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"


NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class Bucket:
    """The connection to one `s3://bucket/prefix`: a boto3 client made on first use (thread-safe, shared by the
    worker), keys under the prefix, and botocore's errors as RepositoryError."""

    def __init__(self, url: str, client: Any = None):
        self.url = url
        self.bucket, self.prefix = parse(url)
        self._client = client
        self._client_lock = threading.Lock()

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
        from botocore.exceptions import BotoCoreError, ClientError  # lazily, as boto3: serving may have no S3

        try:
            yield
        except ClientError as error:
            details = error.response.get("Error", {})
            raise RepositoryError(
                f"{doing} {self.url}: {details.get('Code', '?')} {details.get('Message', '')}".strip()
            ) from None
        except BotoCoreError as error:
            raise RepositoryError(f"{doing} {self.url}: {type(error).__name__}: {error}") from None

    def _etag(self, key: str, doing: str) -> str | None:
        """The object's ETag (one HEAD request), None when there is none."""
        from botocore.exceptions import ClientError  # lazily, as boto3: serving may have no S3

        with self._errors(doing):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in NOT_FOUND:
                    return None
                raise

    def _get(self, key: str, missing_ok: bool = False) -> bytes | None:
        """The object's body; None when it is missing and `missing_ok`."""
        from botocore.exceptions import ClientError  # lazily, as boto3: serving may have no S3

        with self._errors("cannot read"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as error:
                if missing_ok and error.response.get("Error", {}).get("Code") in NOT_FOUND:
                    return None
                raise


class Repository(Bucket):
    """The model repository's layout in one bucket: the reload signal, published versions, their manifests."""

    def __init__(self, url: str, client: Any = None):
        super().__init__(url, client)
        self._puller = Puller(self)
        # manifest key -> (etag, manifest): each manifest is read once, not at every pull.
        self._manifests: dict[str, tuple[str, Manifest]] = {}

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # -- the reload signal ------------------------------------------------------------------------------------------

    def generation(self) -> str | None:
        """The reload signal's current value (its ETag), None when no reload was ever signalled. One HEAD request."""
        return self._etag(self.key(GENERATION), "cannot read the reload signal of")

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
        from bentoml import Model  # lazily: importing bentoml costs seconds

        model = Model.from_path(model_path)
        name, version = model.tag.name, str(model.tag.version)
        archive_key = self.key("models", name, version + ARCHIVE)
        manifest_key = self.key("models", name, version + MANIFEST)
        existing = self._read_manifest(manifest_key)
        if existing is not None:
            return existing
        with tempfile.TemporaryDirectory(prefix="penguins-publish-") as scratch:
            archive = Path(model.export(str(Path(scratch) / (name + "-" + version + ARCHIVE))))
            size, digest = archive.stat().st_size, sha256_of(archive)
            self._upload(archive, archive_key, str(model.tag), digest)
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

    def _upload(self, archive: Path, key: str, tag: str, digest: str) -> None:
        """Upload the archive, checked by the server against its SHA-256, then check the size it stored."""
        size = archive.stat().st_size
        with self._errors(f"cannot upload {tag} to"):
            if size <= SINGLE_PUT_BYTES:
                with archive.open("rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        ChecksumSHA256=_b64(digest),
                        ContentType="application/x-xz",
                    )
            else:
                from boto3.s3.transfer import TransferConfig  # lazily, as boto3: serving may have no S3

                self.client.upload_file(
                    str(archive),
                    self.bucket,
                    key,
                    ExtraArgs={"ChecksumAlgorithm": "SHA256", "ContentType": "application/x-xz"},
                    Config=TransferConfig(multipart_threshold=SINGLE_PUT_BYTES),
                )
            stored = self.client.head_object(Bucket=self.bucket, Key=key)
        if stored["ContentLength"] != size:
            raise RepositoryError(f"{tag}: {self.url} stored {stored['ContentLength']} bytes of a {size}-byte archive")

    def _read_manifest(self, key: str) -> Manifest | None:
        body = self._get(key, missing_ok=True)
        if body is None:
            return None
        try:
            return Manifest.from_json(body)
        except Exception:
            return None  # an unreadable manifest: publishing writes a good one over it

    # -- listing ----------------------------------------------------------------------------------------------------

    def listing(self) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        """(tag -> (manifest key, manifest etag), tag -> archive etag) for everything under models/."""
        manifests: dict[str, tuple[str, str]] = {}
        archives: dict[str, str] = {}
        root = self.key("models") + "/"
        with self._errors("cannot list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for item in page.get("Contents", []):
                    tag, suffix = _tag_of(item["Key"][len(root) :])
                    if suffix == MANIFEST:
                        manifests[tag] = (item["Key"], item["ETag"])
                    elif suffix == ARCHIVE:
                        archives[tag] = item["ETag"]
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
            body = self._get(key)
            try:
                manifest = Manifest.from_json(body or b"")
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

    # -- pulling (penguins/install.py says what and writes it into the local store) ---------------------------------

    def pull(self, store_dir: Path) -> PullResult:
        """Fetch into `store_dir` what serving needs and the store lacks (install.Puller.pull)."""
        return self._puller.pull(store_dir)

    def archive_etag(self, key: str) -> str:
        """The archive's ETag, "" when it is missing."""
        return self._etag(key, f"cannot read {key} of") or ""

    def download(self, key: str, path: Path, tag: str) -> None:
        with self._errors(f"cannot download {tag} from"):
            self.client.download_file(self.bucket, key, str(path))


def _tag_of(relative: str) -> tuple[str, str]:
    """`<name>/<version><suffix>` under models/ -> (`name:version`, suffix); ("", "") for anything else."""
    parts = relative.split("/")
    if len(parts) != 2:
        return "", ""
    name, file = parts
    version, suffix = os.path.splitext(file)
    if not version:
        return "", ""
    return f"{name}:{version}", suffix


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


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
