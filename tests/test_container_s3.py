"""The compose stack's `s3` profile with the real Docker engine: SeaweedFS as the model repository (an image built
from the PyPI wheel), and two API replicas with separate model stores (`api` shares its store with the trainer and
JupyterLab, `api-2` has its own, as on another machine). Training in the jupyter container publishes; one reload on
`api` makes both answer the new version.

    uv run pytest -m "container and s3"
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from tests.compose import COMPOSE, WHY_NOT, Stack
from tests.tiers import unavailable

pytestmark = [pytest.mark.container, pytest.mark.integration, pytest.mark.s3]

if COMPOSE is None:
    unavailable(f"container tests need a Docker engine: {WHY_NOT}", module=True)

LOGS = "/home/bentoml/logs"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("bento-home"),
        profiles=("s3",),
        images=("seaweedfs",),
        AWS_ACCESS_KEY_ID=f"stack-{uuid.uuid4().hex[:8]}",
        AWS_SECRET_ACCESS_KEY=uuid.uuid4().hex,
    )
    try:
        stack.deploy("build")  # the API, jupyter and seaweedfs images (COMPOSE_PROFILES=s3)
        stack.pick_ports("PENGUINS_API_2_PORT")
        stack.url_2 = f"http://127.0.0.1:{stack.env['PENGUINS_API_2_PORT']}"
        stack.deploy("up", "--no-build")  # waits until `api` serves (the trainer may still be saving)
        trainer = stack.compose("ps", "-q", "trainer").stdout.strip()
        exited = stack.run("docker", "wait", trainer, timeout=900).stdout.strip()
        assert exited == "0", stack.logs("trainer")
        yield stack
    finally:
        stack.remove()


def served(url: str) -> dict[str, str]:
    listing = httpx.post(f"{url}/models", timeout=30).json()
    return {m["algorithm"]: m["tag"] for m in listing["models"]}


def diagnosis(stack: Stack) -> str:
    """What each API says about its models and the repository, and their logs without the access lines."""
    parts = []
    for url in (stack.url, stack.url_2):
        try:
            listing = httpx.post(f"{url}/models", timeout=30).json()
            parts.append(f"{url}: {[m['tag'] for m in listing['models']]} failures={listing['failures']}")
            parts.append(f"  repository={listing.get('repository')}")
        except httpx.HTTPError as error:
            parts.append(f"{url}: {error!r}")
    for service in ("api", "api-2", "trainer"):
        lines = stack.compose("logs", service, check=False).stdout.splitlines()
        parts += [line for line in lines if "path=/" not in line][-40:]
    return "\n".join(parts)


def wait_until(check, timeout: float, what: str, stack: Stack) -> float:
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} after {timeout}s:\n{diagnosis(stack)}")
        time.sleep(0.2)


def test_both_replicas_serve_what_the_trainer_published(stack):
    # api-2 started on an empty store of its own: everything it serves came through the repository.
    # The trainer saved every algorithm, published each and reloaded api, whose signal in the bucket reaches api-2.
    assert len(served(stack.url)) == 5
    wait_until(lambda: served(stack.url_2) == served(stack.url), 180, "api-2 does not serve what api serves", stack)
    listing = httpx.post(f"{stack.url_2}/models", timeout=30).json()
    assert listing["repository"]["url"] == "s3://penguins/models" and listing["repository"]["reachable"] is True
    assert listing["replica"]["name"] == "api-2"
    assert stack.health("api-2") == "healthy" and stack.health("seaweedfs") == "healthy"


def test_training_in_jupyter_and_one_reload_reach_both_replicas(stack, figures):
    before = served(stack.url)
    # --no-gate: seed 7 need not score like the served version; what is tested is that it travels.
    stack.exec("jupyter", "python", "train.py", "--models", "random-forest", "--seed", "7", "--no-gate")
    started = time.monotonic()
    report = httpx.post(
        f"{stack.url}/reload", headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=120
    ).json()
    reload_seconds = time.monotonic() - started
    [update] = report["updated"]
    assert update["from"] == before["random-forest"]
    assert report["signal"]["reaches"] == "every replica" and report["signal"]["written"] == ["store", "repository"]
    new = update["to"]
    converged = reload_seconds + wait_until(
        lambda: served(stack.url_2)["random-forest"] == new, 120, f"api-2 does not serve {new}", stack
    )
    for url in (stack.url, stack.url_2):
        for _ in range(5):
            with httpx.Client(timeout=30) as fresh:
                answer = fresh.post(f"{url}/classify_random_forest", json={"penguins": [EXAMPLE_PENGUIN]})
                assert answer.status_code == 200 and answer.json()[0]["model"] == new
    # One log file per replica and worker on the shared logs volume.
    files = stack.exec("api", "sh", "-c", f"ls {LOGS}").split()
    assert {"predictions-api-w1.jsonl", "predictions-api-2-w1.jsonl"} <= set(files), files
    for service in ("api", "api-2", "jupyter", "seaweedfs"):
        assert stack.env["AWS_SECRET_ACCESS_KEY"] not in stack.compose("logs", service).stdout
    figures["replicas: compose s3 profile"] = {
        "replicas": 2,
        "reload call s": round(reload_seconds, 2),
        "second replica serving s": round(converged, 2),
        "sync interval s": 5.0,
    }
