"""Fair share: a lone single-penguin client's latency while 16 connections flood the server with 10,000-penguin
requests, as a ratio to its latency with nothing else running (goal: p50 at most 5x).

    uv run python -m benchmarks.fair_share                 # 20 s unloaded, 20 s flooded
    uv run python -m benchmarks.fair_share --seconds 5     # shorter

The flooders ignore Retry-After (as a hostile client would) and send their next body as soon as an answer comes. A
benchmark, not a test: the machine is shared, so report the figures as measured, with the load it had.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
ROOT = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402

from penguins.contract import EXAMPLE_PENGUIN  # noqa: E402
from tests.harness import run_train, serve  # noqa: E402

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


# The flood runs in a process of its own, niced: its 16 threads must not slow the lone client down in this one, and
# on a 2-core machine its own CPU (the flooders would be other machines) must not take a core from the server.
FLOOD = """
import os, sys, threading, time, json
os.nice(19)
from collections import Counter
import httpx
url, connections, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
bulk = sys.stdin.buffer.read()
outcomes, deadline = Counter(), time.monotonic() + seconds
def flood():
    while time.monotonic() < deadline:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                try:
                    answer = http.post("/classify", content=bulk, headers={"content-type": "application/json"})
                    outcomes[answer.status_code] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1
                    break
threads = [threading.Thread(target=flood) for _ in range(connections)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({str(k): v for k, v in outcomes.items()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the server, e.g. a PENGUINS_ setting"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="penguins-fair-share-") as scratch:
        home = Path(scratch) / "home"
        run_train(home, "--models", "random-forest", "logistic-regression")
        env = dict(item.split("=", 1) for item in args.env)
        with serve(home, Path(scratch) / "serve.log", timeout=240, **env) as url:
            lone_client(url, 2)  # warm-up
            unloaded = lone_client(url, args.seconds)
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOOD, url, str(args.connections), str(args.seconds + 4)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                flood.stdin.write(BULK)
                flood.stdin.close()
                time.sleep(2)  # the flood under way
                flooded = lone_client(url, args.seconds)
                outcomes = json.loads(flood.stdout.read())
                flood.wait(timeout=120)
            finally:
                if flood.poll() is None:
                    flood.kill()
                    flood.wait()
    load = os.getloadavg()[0]
    result = {
        "unloaded p50 ms": round(statistics.median(unloaded) * 1e3, 2),
        "flooded p50 ms": round(statistics.median(flooded) * 1e3, 2),
        "p50 ratio": round(statistics.median(flooded) / statistics.median(unloaded), 2),
        "flooded max ms": round(max(flooded) * 1e3, 1),
        "lone requests unloaded / flooded": f"{len(unloaded)} / {len(flooded)}",
        "bulk answers": dict(sorted(outcomes.items())),
        "machine load (1 min)": round(load, 2),
        "server settings": env,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
