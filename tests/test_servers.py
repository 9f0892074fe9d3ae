"""The test harness itself: a server the tests start is stopped whole, even once its arbiter was SIGKILLed (BentoML's
workers run in sessions of their own and outlive it)."""

from __future__ import annotations

import os
import shutil
import signal

import httpx
import pytest

from tests.harness import PROCESS_TAG, serve, tagged

pytestmark = pytest.mark.integration


def test_a_server_whose_arbiter_was_killed_leaves_no_worker_behind(tmp_path, store_dir):
    home = tmp_path / "home"
    shutil.copytree(store_dir, home / "models")
    with serve(home, tmp_path / "serve.log") as url:
        # The workers (the arbiter's own environment is overwritten by its process title: it is the Popen).
        assert tagged(PROCESS_TAG, url.process.tag), "no worker found by its tag"
        os.killpg(url.process.pid, signal.SIGKILL)  # the arbiter's group only: the workers are elsewhere
        url.process.wait()
        orphans = tagged(PROCESS_TAG, url.process.tag)
        assert orphans, "the workers died with the arbiter: this test would prove nothing"
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200  # and they still serve
    assert tagged(PROCESS_TAG, url.process.tag) == []
