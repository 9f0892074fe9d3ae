"""The prediction log: one JSON line per answered prediction request, durable and safe with several workers.

Each worker appends to its own size-rotated file (`predictions-w<worker>.jsonl`, then `.1`, `.2`, ...), so lines from
different processes never interleave, and every line is flushed before the response's last byte is sent. Read it
all back with pandas:

    pd.concat(pd.read_json(f, lines=True) for f in Path(LOG_DIR).glob("predictions-*.jsonl*"))
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
from datetime import UTC, datetime
from pathlib import Path

_MODEL = re.compile(rb'"model":\s*"([^"]+)"')


class PredictionLog:
    def __init__(self, directory: Path, max_bytes: int, backups: int, worker: int | str | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        worker = worker if worker is not None else os.getpid()
        self.path = directory / f"predictions-w{worker}.jsonl"
        # A logger of its own, outside the logging tree: nothing else's handlers or levels apply to it.
        self._logger = logging.Logger(f"penguins.predictions.{worker}")
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

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
                b"}",
            )
        )
        self._logger.info(line.decode("utf-8", errors="replace"))  # the handler flushes each record


def worker_index() -> int | None:
    from bentoml._internal.context import server_context

    return server_context.worker_index
