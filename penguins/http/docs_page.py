"""The docs page at `/`: BentoML's Swagger UI page with nothing loaded from outside the origin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# BentoML's page with what loaded from elsewhere taken out (Google Tag Manager, the GitHub corner), without its
# stylesheet (it hides the document's title), and with Swagger UI's
# online validator badge switched off; the Swagger UI files are the ones BentoML ships and serves at /static_content.
DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Palmer Penguins classifier: API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <style>body { margin: 0; background: #fafafa; } .swagger-ui .topbar { display: none; }</style>
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./docs-init.js" charset="UTF-8"></script>
  </body>
</html>
"""


DOCS_INIT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    validatorUrl: null,
  });
};
"""
DOCS_FILES: dict[str, tuple[bytes, bytes]] = {
    "/": (DOCS_PAGE, b"text/html; charset=utf-8"),
    "/docs-init.js": (DOCS_INIT, b"text/javascript; charset=utf-8"),
}
# What the docs page may load: this origin only (the inline styles and data: images are Swagger UI's own).
DOCS_POLICY = b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


async def docs_file(send: Callable[..., Any], path: str, head: bool = False) -> None:
    body, content_type = DOCS_FILES[path]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", DOCS_POLICY),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
