"""The BentoML service configuration our settings make (the service's and the benchmark's no-op ceiling's)."""

from __future__ import annotations

from typing import Any

from penguins.settings import Settings


def server_config(settings: Settings) -> dict[str, Any]:
    """The BentoML service configuration our settings make (the benchmark's no-op ceiling uses it too)."""
    config: dict[str, Any] = {
        "workers": settings.workers,
        "threads": settings.threads,
        "traffic": {"timeout": 60},
        "logging": {"access": {"enabled": settings.access_log}},
        # BentoML's HTTP metrics labelled series by raw path (unbounded): ours replace them (penguins.http.metrics).
        "metrics": {"enabled": False},
    }
    if not settings.trace_requests:
        # BentoML 1.4 always installs its tracing middleware; an excluded URL passes through it untouched.
        config["tracing"] = {"excluded_urls": ".*"}
    if settings.cors_origins:
        config["http"] = {
            "cors": {
                "enabled": True,
                "access_control_allow_origins": settings.cors_origins,
                # Starlette's defaults allow GET alone and no request headers: a browser's JSON POST needs these.
                "access_control_allow_methods": ["GET", "POST"],
                "access_control_allow_headers": ["authorization", "content-type", "x-request-id"],
                "access_control_expose_headers": ["x-request-id"],
            }
        }
    return config
