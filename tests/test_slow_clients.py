"""Slow and idle connections cannot take a real `bentoml serve` away from a normal client: requests must bring their
headers and body in time, and beyond its cap a worker drops the least recently active idle connection for a new one.

The attack: 20,000 connections from two processes (the fd limit of one is ~20,000 here), each sending a request's
first header line and then one more header line every few seconds, never finishing (slowloris), while a normal
client sends a request every 0.2 s on a fresh connection with a 10 s timeout. Bounded in count and in time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from tests.harness import ROOT, serve

pytestmark = pytest.mark.integration

SLOW = 20_000
ATTACK_S = 45

# One attacking process: `count` connections from `source` (a loopback address of its own, for source ports),
# opened in batches, each trickling header lines; prints what it saw as JSON and exits after `seconds`.
SLOWLORIS = """
import json, selectors, socket, sys, time
host, port, source, count, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
selector = selectors.DefaultSelector()
opened = closed = failed = 0
live = {}
started = time.monotonic()
deadline = started + seconds
while opened + failed < count and time.monotonic() < deadline:
    for _ in range(min(500, count - opened - failed)):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((source, 0))
            s.connect_ex((host, port))
        except OSError:
            failed += 1
            s.close()
            continue
        live[s.fileno()] = s
        selector.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, "new")
        opened += 1
    time.sleep(0.2)
    for key, events in selector.select(timeout=0):
        s = key.fileobj
        try:
            if key.data == "new" and events & selectors.EVENT_WRITE:
                s.send(b"POST /classify HTTP/1.1\\r\\nHost: x\\r\\n")
                selector.modify(s, selectors.EVENT_READ, "sent")
            elif events & selectors.EVENT_READ and not s.recv(4096):
                raise ConnectionError
        except OSError:
            selector.unregister(s); live.pop(s.fileno(), None); s.close(); closed += 1
most = len(live)
last_trickle = 0.0
while time.monotonic() < deadline:
    for key, events in selector.select(timeout=0.5):
        s = key.fileobj
        try:
            if events & selectors.EVENT_WRITE:
                s.send(b"POST /classify HTTP/1.1\\r\\nHost: x\\r\\n")
                selector.modify(s, selectors.EVENT_READ, "sent")
            elif not s.recv(4096):
                raise ConnectionError
        except OSError:
            selector.unregister(s); live.pop(s.fileno(), None); s.close(); closed += 1
    if time.monotonic() - last_trickle > 3:
        for s in list(live.values()):
            try:
                s.send(b"X-Slow: 1\\r\\n")
            except OSError:
                pass
        last_trickle = time.monotonic()
    most = max(most, len(live))
print(json.dumps({"opened": opened, "failed": failed, "closed_by_server": closed, "most_open": most,
                  "open_at_end": len(live)}))
"""


def test_a_normal_client_gets_its_answers_through_20000_slow_connections(tmp_path, store_dir, figures):
    home = tmp_path / "home"
    shutil.copytree(store_dir, home / "models")
    with serve(
        home, tmp_path / "serve.log", PENGUINS_HEADER_TIMEOUT_S="10", PENGUINS_MAX_CONNECTIONS="4096", timeout=240
    ) as url:
        address = urlsplit(url)
        attackers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SLOWLORIS,
                    address.hostname,
                    str(address.port),
                    source,
                    str(SLOW // 2),
                    str(ATTACK_S),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )  # fmt: skip
            for source in ("127.0.0.2", "127.0.0.3")
        ]
        answered, failed = [], []
        try:
            time.sleep(5)  # the connections pile up
            deadline = time.monotonic() + ATTACK_S - 10
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = httpx.post(f"{url}/classify", json={"penguins": [EXAMPLE_PENGUIN]}, timeout=10)
                    (answered if response.status_code == 200 else failed).append(time.perf_counter() - started)
                except httpx.HTTPError as error:
                    failed.append(repr(error))
                time.sleep(0.2)
            reports = [json.loads(a.communicate(timeout=ATTACK_S + 60)[0]) for a in attackers]
        finally:
            for attacker in attackers:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
    opened = sum(r["opened"] for r in reports)
    assert opened >= SLOW * 0.95, reports  # the attack happened at the size it says
    assert sum(r["closed_by_server"] for r in reports) > opened / 2, reports  # dropped: timed out or evicted
    assert failed == [] and len(answered) > 20, failed[:5]
    figures["slow connections"] = {
        "slow connections opened": opened,
        "closed by the server": sum(r["closed_by_server"] for r in reports),
        "most held open at once (client side)": sum(r["most_open"] for r in reports),
        "normal requests": len(answered),
        "failed": len(failed),
        "normal p50 ms": round(sorted(answered)[len(answered) // 2] * 1e3, 1),
        "normal max ms": round(max(answered) * 1e3, 1),
    }


def test_an_incomplete_request_is_closed_after_the_header_timeout(tmp_path, store_dir):
    import socket

    home = tmp_path / "home"
    shutil.copytree(store_dir, home / "models")
    with serve(
        home, tmp_path / "serve.log", PENGUINS_HEADER_TIMEOUT_S="2", PENGUINS_BODY_TIMEOUT_S="2", timeout=240
    ) as url:
        address = urlsplit(url)
        results = {}

        def hold(name: str, first: bytes) -> None:
            with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
                raw.sendall(first)
                started = time.monotonic()
                try:
                    results[name] = (raw.recv(1024), time.monotonic() - started)
                except TimeoutError:
                    results[name] = (None, time.monotonic() - started)

        threads = [
            threading.Thread(target=hold, args=("idle", b"")),
            threading.Thread(target=hold, args=("partial headers", b"POST /classify HTTP/1.1\r\nHost: x\r\n")),
            threading.Thread(
                target=hold,
                args=(
                    "partial body",
                    b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{",
                ),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name, (data, waited) in results.items():
        assert data == b"" and waited < 10, (name, data, waited)  # closed by the server, not by our 30 s timeout
