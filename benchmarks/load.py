"""The load generator (`wrk`, a closed loop of N connections in its own process) and the wait for a quiet machine,
shared by the benchmark (benchmarks/run.py) and the peers' comparison (benchmarks/peers/compare.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BULK_ROWS = 10_000  # rows per batch in the bulk figures


def wrk(url: str, body: dict, connections: int, seconds: float) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(ROOT / "benchmarks" / "wrk.lua"),
        url,
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
        env={**os.environ, "BENCH_BODY": json.dumps(body)},
    ).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    return {
        "concurrency": connections,
        # Failed requests are counted apart, never as throughput.
        "rps": (stats["requests"] - stats["errors"]) / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "errors": stats["errors"],
        "requests": stats["requests"],
    }


def settle(timeout: float = 60) -> None:
    """Wait until the machine is nearly idle: a server left with abandoned requests (the baseline at high concurrency
    answers long after wrk stops) would otherwise take CPU from the next server measured."""

    def busy() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)  # not idle, not iowait

    if not Path("/proc/stat").exists():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (b0, t0), _ = busy(), time.sleep(0.25)
        b1, t1 = busy()
        if (b1 - b0) / max(t1 - t0, 1) < 0.1:
            return
