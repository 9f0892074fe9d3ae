"""The web page: plain HTML, CSS and JS files served by a small Starlette app that the service mounts at /ui.

The page only calls the service's public APIs (`models`, `explain`, `training_map`) and reads the Penguin schema
from `/docs.json`: it has no model, vocabulary or prediction of its own. Nothing is loaded from the internet.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
PATH = "/ui"
# Everything from this server only: a page that tried to load anything from elsewhere would break here first.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'",
    "Cache-Control": "no-cache",
}


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=HEADERS)


def create_app() -> Starlette:
    return Starlette(routes=[Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static")])
