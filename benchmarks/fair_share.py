"""Fair share: a lone single-penguin client's latency while 16 connections flood the server with 10,000-penguin
requests, as a ratio to its latency with nothing else running (goal: p50 at most 5x).

    uv run python benchmarks/fair_share.py                 # 20 s unloaded, 20 s flooded
    uv run python benchmarks/fair_share.py --seconds 5     # shorter

The flooders ignore Retry-After (as a hostile client would) and send their next body as soon as an answer comes. A
benchmark, not a test: the machine is shared, so report the figures as measured, with the load it had.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from penguins.contract import EXAMPLE_PENGUIN  # noqa: E402
from tests.servers import run_train, serve  # noqa: E402

BULK = json.dumps({"penguins": [EXAMPLE_PENGUIN] * 10_000}).encode()
ONE = json.dumps({"penguins": [EXAMPLE_PENGUIN]}).encode()
HEADERS = {"content-type": "application/json"}


def lone_client(url: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.post("/classify", content=ONE, headers=HEADERS)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return latencies


def flooder(url: str, stop: threading.Event, outcomes: Counter) -> None:
    while not stop.is_set():
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                try:
                    outcomes[http.post("/classify", content=BULK, headers=HEADERS).status_code] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1
                    break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="penguins-fair-share-") as scratch:
        home = Path(scratch) / "home"
        run_train(home, "--models", "random-forest", "logistic-regression")
        with serve(home, Path(scratch) / "serve.log") as url:
            lone_client(url, 2)  # warm-up
            unloaded = lone_client(url, args.seconds)
            stop, outcomes = threading.Event(), Counter()
            threads = [threading.Thread(target=flooder, args=(url, stop, outcomes)) for _ in range(args.connections)]
            for thread in threads:
                thread.start()
            time.sleep(2)  # the flood under way
            try:
                flooded = lone_client(url, args.seconds)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
    load = os.getloadavg()[0]
    result = {
        "unloaded p50 ms": round(statistics.median(unloaded) * 1e3, 2),
        "flooded p50 ms": round(statistics.median(flooded) * 1e3, 2),
        "p50 ratio": round(statistics.median(flooded) / statistics.median(unloaded), 2),
        "flooded max ms": round(max(flooded) * 1e3, 1),
        "lone requests unloaded / flooded": f"{len(unloaded)} / {len(flooded)}",
        "bulk answers": dict(sorted((str(k), v) for k, v in outcomes.items())),
        "machine load (1 min)": round(load, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
