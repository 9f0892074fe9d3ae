"""Which route of the app below takes a request, read from its Starlette router at request time, so routes
added while serving are known at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ASGIApp = Callable[..., Any]


class RouteTable:
    """Which route of the app below takes a request, read from its Starlette router at request time."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._router: Any = None
        self._plain: dict[str, Any] = {}
        self._key: tuple[int, int] | None = None

    def router(self) -> Any:
        if self._router is None:
            from starlette.routing import Router

            node = self.app
            for _ in range(64):  # middlewares down to the router: each keeps the next as `.app`
                if isinstance(node, Router) or node is None:
                    break
                node = getattr(node, "app", None)
            self._router = node if isinstance(node, Router) else False
        return self._router or None

    def match(self, scope: dict[str, Any]) -> tuple[str | None, set[str]]:
        """(the matching route's path template, or None; the methods allowed on the path when only it matched)."""
        router = self.router()
        if router is None:
            return scope["path"], set()  # not a router below: no opinion
        routes = router.routes
        key = (id(routes), len(routes))
        if key != self._key:  # routes changed: re-index the plain ones (no parameters), the API routes among them
            self._plain = {r.path: r for r in routes if getattr(r, "param_convertors", None) == {} and r.methods}
            self._key = key
        plain = self._plain.get(scope["path"])
        if plain is not None and scope["method"] in plain.methods:
            return plain.path, set()
        label, allowed = _match(routes, scope)
        if label is None and not allowed and router.redirect_slashes and scope["path"] != "/":
            # The router redirects /ui to /ui/ (and back): a path it redirects is taken too.
            path = scope["path"]
            other = path[:-1] if path.endswith("/") else path + "/"
            label, _ = _match(routes, {**scope, "path": other})
        return label, allowed


def _match(routes: list[Any], scope: dict[str, Any]) -> tuple[str | None, set[str]]:
    from starlette.routing import Match

    allowed: set[str] = set()
    for route in routes:
        found, _ = route.matches(scope)
        if found is Match.FULL:
            return route.path, set()
        if found is Match.PARTIAL:
            allowed |= set(getattr(route, "methods", None) or ())
    return None, allowed
