"""Runtime configuration: the one settings object read from PENGUINS_* environment variables (the service's, the
pipeline's, the bootstrap's), each with its one default. docs/configuration.md lists every field (a unit test
checks it against this class). This module reads nothing at import: get_settings() reads the environment when first
called (and caches it); pipeline.settings() builds a fresh one per step, with the run's parameters.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///penguins.db"  # in the working directory


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PENGUINS_", frozen=True)

    max_penguins: int = Field(default=10_000, ge=1, description="Most penguins accepted in one request")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted")
    workers: int = Field(default=1, ge=1)
    threads: int = Field(default=4, ge=1)
    batching: bool = Field(default=True, description="Adaptive batching on the per-model endpoints")
    # Most penguins that different requests to a per-model endpoint combine into one batch (a request is never split).
    max_batch_size: int = Field(default=1000, ge=2)
    # Not the batching wait (that is max_batch_wait_ms) but its load-shedding bound: BentoML 1.4 cancels a queued
    # request whose expected latency passes it: a small bound drops requests under ordinary load (docs/performance.md).
    max_latency_ms: int = Field(default=10_000, ge=1)
    # The longest a queued request waits for company before its batch goes. BentoML 1.4 learns this wait from past
    # batches and, after heavy load, can settle on a long one for a lone client; we cap what it learns.
    max_batch_wait_ms: float = Field(default=1.0, ge=0)
    # BentoML's OpenTelemetry span for every request. Spans leave the worker only through a tracing exporter set in
    # BentoML's own configuration (`tracing:`); without one they go nowhere and cost much of a small request's CPU
    # (docs/performance.md has the figure).
    trace_requests: bool = Field(default=False, description="Trace every request (needs BentoML's tracing exporter)")
    access_log: bool = Field(default=True, description="BentoML's access log: one line per request on stdout")
    compiled: bool = Field(default=True, description="Serve the ONNX form of a model when it was saved with one")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token required by reload")
    # Where orchestrators put secrets (a Docker secret in /run/secrets, a mounted Kubernetes Secret): the token then
    # never appears in the environment or in a deploy file.
    admin_token_file: Path | None = Field(default=None, description="File holding admin_token (one line)")
    cors_origins: list[str] = Field(default_factory=list)
    log_predictions: bool = Field(default=True, description="Append a JSON line per answered prediction")
    log_dir: Path | None = Field(
        default=None, description="Where prediction logs go; $BENTOML_HOME/prediction-logs when unset"
    )
    log_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="Rotate a worker's log at this size")
    log_backups: int = Field(default=5, ge=1, description="Rotated files kept per worker")
    # Replicas (docs/replicas.md). The object-storage model repository, `s3://bucket/prefix`; unset: none. Its
    # endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3,
    # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_SHARED_CREDENTIALS_FILE), read by boto3.
    model_repository: str | None = Field(
        default=None, description="s3://bucket/prefix: publish every saved version there, pull what is missing"
    )
    # How often each worker checks the reload signal (in the shared store and in the repository) without traffic,
    # and retries an unreachable repository: the bound on how long an idle replica serves an old generation.
    sync_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Names this replica's prediction log files and its entry in /models; the host (container) name when unset.
    replica_name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @field_validator("model_repository")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?", value):
            raise ValueError("must be s3://bucket or s3://bucket/prefix (a valid bucket name, no spaces)")
        return value.rstrip("/")

    # A body this big (about 450 penguins) is bulk: validated in a thread, not on the event loop, and only
    # `bulk_concurrency` of them are worked on at once per worker; up to `bulk_queue` more wait their turn, their
    # bodies unread (a socket each); beyond that they are answered 429 with Retry-After.
    bulk_body_bytes: int = Field(default=64 * 1024, ge=1024)
    bulk_concurrency: int = Field(default=1, ge=1, description="Bulk requests a worker works on at once")
    bulk_queue: int = Field(default=32, ge=0, description="Bulk requests that wait their turn per worker")
    bulk_retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 429 for bulk requests")
    # How often CPython hands the GIL between threads (its default is 5 ms): a bulk request's CPU-bound thread made
    # the event loop wait that long at each of its turns, so a lone small request waited many times that. At 0.5 ms
    # the concurrency benchmark did not change (docs/reliability.md, Fair share).
    switch_interval_ms: float = Field(default=0.5, gt=0)
    # On SIGTERM a worker finishes what is in flight within this, answering new requests 503 meanwhile (docker stop
    # waits 10 s before SIGKILL).
    drain_s: float = Field(default=8.0, ge=0, description="Longest a worker drains on SIGTERM")
    # Slow clients: a request's headers must arrive within header_timeout_s, its body within body_timeout_s after;
    # beyond max_connections per worker the least recently active idle connection is closed for a new one.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=4096, ge=16, description="Connections a worker holds at once")

    # The retraining pipeline (penguins/pipeline.py, the DAG's steps) and train.py's data. The DAG's run parameters
    # override these per run.
    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the penguin tables")
    csv: str | None = Field(default=None, description="CSV to ingest instead of the bundled Palmer Penguins rows")
    # A JSON list; unset or empty: every built-in algorithm. The pipeline's train step and the bootstrap's.
    models: list[str] | None = Field(default=None, description="Algorithms to train (default: all)")
    seed: int = Field(default=42, description="The pipeline's training seed (train.py's --seed default too)")
    # gate.DEFAULT_TOLERANCE (train.py's --tolerance default); tests/test_settings.py checks they agree.
    tolerance: float = Field(default=0.01, ge=0, description="Promotion gate tolerance")
    # The API the pipeline's reload step and the bootstrap call; unset: the pipeline skips reload, the bootstrap
    # refuses to start (every deploy sets it: http://api:3000 in compose and the stack).
    api_url: str | None = Field(default=None, description="Base URL of the penguin API to reload")
    api_wait: float = Field(default=300, gt=0, description="Seconds the bootstrap waits for the API and repository")

    # notebooks/02-train.ipynb: what it trains, space-separated (a notebook run's own choice, apart from the pipeline).
    notebook_models: str | None = Field(default=None, description="Algorithms the training notebook trains")

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_url_is_the_default(cls, value: object) -> object:
        return DEFAULT_DATABASE_URL if value == "" else value

    @field_validator("csv", "models", "api_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Deploy files pass `${PENGUINS_TRAIN_MODELS:-}`: an empty variable means unset, as in a shell.
        return None if value in ("", []) else value

    @model_validator(mode="after")
    def _read_token_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        if self.admin_token is not None:
            raise ValueError("set PENGUINS_ADMIN_TOKEN or PENGUINS_ADMIN_TOKEN_FILE, not both")
        token = self.admin_token_file.read_text().strip()  # an unreadable file fails the start, as it should
        if not token:
            raise ValueError(f"PENGUINS_ADMIN_TOKEN_FILE {self.admin_token_file} is empty")
        object.__setattr__(self, "admin_token", SecretStr(token))  # the model is frozen once validated
        return self


@cache
def get_settings() -> Settings:
    return Settings()
