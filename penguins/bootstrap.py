"""One-shot trainer of the compose stack: train into the shared store when it holds no penguin model, then make
the API serve what the store holds with one reload call.

    python -m penguins.bootstrap        # the `trainer` of docker-compose.yml, the swarm stack and the Helm chart

The API starts at the same time on the same (possibly empty) store and reports not-ready until models are loaded;
this waits for it to answer, then calls `reload` with the admin token when one is set (PENGUINS_ADMIN_TOKEN, or
PENGUINS_ADMIN_TOKEN_FILE: a Docker secret in the swarm stack).
Settings (penguins/settings.py, docs/configuration.md): PENGUINS_API_URL (required: http://api:3000 in every deploy),
PENGUINS_API_WAIT seconds (default 300), PENGUINS_MODELS (a JSON list of algorithms to train; default all). With a model
repository (PENGUINS_MODEL_REPOSITORY), it first waits for the repository, and what the repository holds counts as
stored (train.py --if-empty pulls it first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from penguins import publishing
from penguins.bucket import RepositoryError
from penguins.settings import get_settings

# train.py sits beside the package (the project's layout, in the repository and in both images).
TRAIN = Path(__file__).resolve().parents[1] / "train.py"


def wait_live(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/livez", timeout=5):
                return
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API at {url} did not answer within {timeout:g}s ({error})") from None
        time.sleep(2)


def wait_repository(timeout: float) -> None:
    """With a model repository (compose profile s3), wait until it answers: it may start later than this."""
    configured = publishing.configured()
    if configured is None:
        return
    print(f"waiting for the model repository {configured.url}", flush=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            configured.listing()  # fails until the bucket exists, too
            return
        except RepositoryError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model repository did not answer within {timeout:g}s ({error})") from None
        time.sleep(2)


def main() -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    settings = get_settings()
    if not settings.api_url:
        print("PENGUINS_API_URL is not set: no API to reload (every deploy sets it)", file=sys.stderr)
        return 2
    wait_s = settings.api_wait
    wait_repository(wait_s)
    models = settings.models or []  # as for the pipeline: all of them when unset
    status = subprocess.run(
        [sys.executable, str(TRAIN), "--if-empty", *(["--models", *models] if models else [])]
    ).returncode
    if status:
        return status

    import bentoml  # lazily: importing bentoml costs seconds, and the wait above needs none of it

    url = settings.api_url.rstrip("/")
    secret = settings.admin_token
    token = secret.get_secret_value() if secret else None
    print(f"waiting for the API at {url}", flush=True)
    wait_live(url, wait_s)
    # server_ready_timeout=0: the API is not ready (no model loaded) until this very reload.
    with bentoml.SyncHTTPClient(url, token=token, server_ready_timeout=0) as client:
        result = client.reload()
    print(f"reloaded: serving {', '.join(result['serving']) or 'nothing'}; default {result['default']}", flush=True)
    return 0 if result["serving"] else 1


if __name__ == "__main__":
    sys.exit(main())
