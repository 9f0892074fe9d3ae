"""Run inside the swarm tests' hub namespace (`nsenter --net=...`): the one place that reaches every node.

python tests/swarm_client.py loop URL OUT [--seconds N]   classify through URL until SIGTERM (or N s); one JSON
                                                         line per request into OUT
python tests/swarm_client.py get URL [--post]             one request; prints {"status", "body"} as JSON
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from penguins.contract import EXAMPLE_PENGUIN  # noqa: E402

stopping = False


def _stop(signum, frame):
    global stopping
    stopping = True


def loop(url: str, out: Path, seconds: float, pause: float) -> None:
    signal.signal(signal.SIGTERM, _stop)
    body = {"penguins": [EXAMPLE_PENGUIN]}
    deadline = time.monotonic() + seconds
    with out.open("a", buffering=1) as log, httpx.Client(timeout=15) as client:
        while not stopping and time.monotonic() < deadline:
            started = time.time()
            entry: dict = {"t": started}
            try:
                answer = client.post(f"{url}/classify", json=body)
                entry["status"] = answer.status_code
                if answer.status_code == 200:
                    entry["model"] = answer.json()[0]["model"]
                else:
                    entry["error"] = answer.text[:300]
            except httpx.HTTPError as error:
                entry["status"] = 0
                entry["error"] = f"{type(error).__name__}: {error}"
            entry["seconds"] = round(time.time() - started, 4)
            log.write(json.dumps(entry) + "\n")
            time.sleep(pause)


def get(url: str, post: bool, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.request("POST" if post else "GET", url, headers=headers, json={} if post else None, timeout=30)
        result = {"status": answer.status_code, "body": answer.text}
    except httpx.HTTPError as error:
        result = {"status": 0, "body": f"{type(error).__name__}: {error}"}
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    looping = sub.add_parser("loop")
    looping.add_argument("url")
    looping.add_argument("out", type=Path)
    looping.add_argument("--seconds", type=float, default=1800)
    looping.add_argument("--pause", type=float, default=0.02)
    once = sub.add_parser("get")
    once.add_argument("url")
    once.add_argument("--post", action="store_true")
    once.add_argument("--token")
    args = parser.parse_args()
    if args.command == "loop":
        loop(args.url, args.out, args.seconds, args.pause)
    else:
        get(args.url, args.post, args.token)
