"""The prediction log: one JSON line per answered prediction request, durable and safe with several workers.

Each worker of each replica appends to its own size-rotated file (`predictions-<replica>-w<worker>.jsonl`, then `.1`,
`.2`, ...; the replica is PENGUINS_REPLICA_NAME or the host/container name), so lines from different processes never
interleave and a rotation renames only its own files, even with many replicas on one shared log volume. Every line is
flushed before the response's last byte is sent. Read it all back with pandas:

    pd.concat(pd.read_json(f, lines=True) for f in Path(LOG_DIR).glob("predictions-*.jsonl*"))
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

_MODEL = re.compile(rb'"model":\s*"([^"]+)"')
logger = logging.getLogger(__name__)


class PredictionLog:
    """One worker's log file, appended to and rotated like `logging`'s RotatingFileHandler names its files.

    Not through `logging` itself: its record, caller lookup, double format and two stats per line cost ~40 µs of
    the event loop per request; one O_APPEND write(2) costs ~2 µs and is in the page cache, safe from a crash of the
    process, before the answer's last byte goes out. Written from the worker's event loop only.
    """

    def __init__(
        self, directory: Path, max_bytes: int, backups: int, worker: int | str | None = None, replica: str | None = None
    ):
        directory.mkdir(parents=True, exist_ok=True)
        worker = worker if worker is not None else os.getpid()
        stem = f"predictions-{replica}-w{worker}" if replica else f"predictions-w{worker}"
        self.path = directory / f"{stem}.jsonl"
        self.max_bytes, self.backups = max_bytes, backups
        self._failing = False
        self._open()

    def _open(self) -> None:
        """Open the live file, owning it: an exclusive lock held while it is written. A live process with the same
        replica name and worker index (two servers on one host sharing a log folder) holds it already: then this
        process adds its pid to the name, so each file and its rotation keep a single writer."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            owner = self.path
            self.path = self.path.with_name(f"{self.path.name.removesuffix('.jsonl')}-p{os.getpid()}.jsonl")
            logger.warning("prediction log: %s belongs to another live process; writing %s", owner, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        """Release the file (and its ownership); a worker that exits does it by exiting."""
        os.close(self._fd)

    def _rotate(self) -> None:
        """The live file becomes `.1`, `.1` becomes `.2`, ...; the oldest beyond `backups` is overwritten."""
        os.close(self._fd)
        for i in range(self.backups - 1, 0, -1):
            older = Path(f"{self.path}.{i}")
            if older.exists():
                older.replace(f"{self.path}.{i + 1}")
        self.path.replace(f"{self.path}.1")
        self._open()

    def write(self, request_id: str, route: str, request_body: bytes, response_body: bytes, latency_s: float) -> None:
        """Append one line; the bodies are embedded as the JSON they already are, never re-serialised."""
        match = _MODEL.search(response_body)
        line = b"".join(
            (
                b'{"ts": "',
                datetime.now(UTC).isoformat(timespec="microseconds").encode(),
                b'", "request_id": ',
                json.dumps(request_id).encode(),  # a client's x-request-id: quoted and escaped
                b', "route": "',
                route.encode(),
                b'", "model": "',
                match.group(1) if match else b"",
                b'", "latency_ms": ',
                f"{latency_s * 1e3:.3f}".encode(),
                # JSON allows raw newlines only as whitespace between tokens, so folding them keeps the JSON.
                b', "input": ',
                request_body.replace(b"\n", b" ").replace(b"\r", b" "),
                b', "output": ',
                response_body.replace(b"\n", b" ").replace(b"\r", b" "),
                b"}\n",
            )
        )
        try:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            written = os.write(self._fd, line)
            if written != len(line):  # a disk that filled up mid-line: the start of it is on disk
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            self._size += len(line)
            self._failing = False
        except OSError as error:  # a full disk must not turn answers into 500s: say so when it starts, serve on
            self._cut_back()
            failures_counter().inc()
            if not self._failing:
                logger.error("prediction log: cannot write to %s (%s); answering without it", self.path, error)
            self._failing = True

    def _cut_back(self) -> None:
        """Undo a partial line: the file ends with the last whole one, so the next line starts a line of its own."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:  # the file itself is gone or closed (a failed rotation, a vanished volume): start it again
            with contextlib.suppress(OSError):
                os.close(self._fd)
            with contextlib.suppress(OSError):  # still failing: the next write tries again
                self._open()


@cache
def failures_counter() -> Any:
    """Lines the log could not write (disk full, volume gone), counted in the worker's /metrics."""
    from prometheus_client import Counter

    return Counter("penguins_prediction_log_failures", "Prediction-log lines that could not be written")
