"""The pipeline steps the DAG calls, without Airflow: settings precedence and the reload call's failure modes."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from penguins import pipeline


def test_run_parameters_override_the_environment_and_empty_ones_do_not(monkeypatch):
    monkeypatch.setenv("PENGUINS_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("PENGUINS_MODELS", '["knn"]')
    monkeypatch.setenv("PENGUINS_TOLERANCE", "0.02")
    config = pipeline.settings({"database_url": None, "models": [], "tolerance": 0.05, "csv": ""})
    assert config.database_url == "sqlite:///from-env.db" and config.models == ["knn"]
    assert config.tolerance == 0.05 and config.csv is None
    with pytest.raises(ValueError):
        pipeline.settings({"tolerance": -1})


def test_reload_is_skipped_without_an_api_url(monkeypatch):
    monkeypatch.delenv("PENGUINS_API_URL", raising=False)
    assert "skipped" in pipeline.reload()


@pytest.fixture
def api():
    """A stand-in API whose /reload wants `Bearer right`; records the Authorization headers it saw."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            ok = self.path == "/reload" and self.headers.get("Authorization") == "Bearer right"
            body = b'{"added": []}' if ok else b'{"error": "reload needs the admin bearer token"}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_reload_sends_the_token_and_fails_loudly_when_refused(api, monkeypatch):
    url, seen = api
    monkeypatch.setenv("PENGUINS_API_URL", url + "/")
    monkeypatch.setenv("PENGUINS_ADMIN_TOKEN", "right")
    assert pipeline.reload() == {"added": []}
    monkeypatch.setenv("PENGUINS_ADMIN_TOKEN", "wrong")
    with pytest.raises(RuntimeError, match="401"):
        pipeline.reload()
    assert seen == ["Bearer right", "Bearer wrong"]
