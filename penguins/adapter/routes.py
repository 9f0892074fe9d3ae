"""Per-model routes in a running app: BentoML fixes a service's routes when its app is built (bentoml/BentoML#4460)."""

from __future__ import annotations

import functools
from typing import Any

from penguins.adapter.guard import Target, fits, fix

SERVE_APIS = fix(
    "serve_apis",
    "bentoml",
    [
        Target(
            "_bentoml_impl.server.app",
            "ServiceAppFactory.api_endpoint_wrapper",
            ("self", "name", "request"),
            uses=("api_endpoint",),
        ),
        # Looks each API up by name at request time: in `service.apis`, on the instance, in `dispatchers`.
        Target("_bentoml_impl.server.app", "ServiceAppFactory", uses=("apis", "_service_instance", "dispatchers")),
        Target(
            "bentoml._internal.marshal.dispatcher",
            "CorkDispatcher.__init__",
            ("self", "max_latency_in_ms", "max_batch_size", "shared_sema", "fallback", "get_batch_size", "batch_dim"),
        ),
        Target("bentoml._internal.runner.container", "AutoContainer.get_batch_size", ("batch", "batch_dim")),
        # Where BentoML puts an API's route: under the service's `path_prefix`.
        Target("bentoml._internal.utils.uri", "join_paths", ("paths",)),
        Target("_bentoml_impl.server.app", "ServiceAppFactory.routes", uses=("join_paths", "path_prefix")),
    ],
    upstream="bentoml/BentoML#4460",
    what="routes are fixed when the app is built: no typed endpoint for a model trained after start-up",
)


def serve_apis(app: Any, apis: dict[str, Any]) -> bool:
    """Make a running BentoML 1.4 app serve exactly `apis` (name -> APIMethod) besides the service's own.

    BentoML's ASGI app looks every API up by name at request time — the method in `service.apis`, the callable on the
    service instance, the batching dispatcher in its app factory — and `/docs.json` and `/schema.json` are generated
    from `service.apis`. So adding an API is: a dispatcher (when batchable), the instance's callable, a new `apis`
    dict and a new route list, each swapped in whole so a request in flight reads either the old or the new one.
    Call it on the event loop. False when it stays off.
    """
    if not fits(SERVE_APIS.name):
        return False
    # Imported here: BentoML's server internals load only in a serving process, once the guard says they fit.
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.marshal.dispatcher import CorkDispatcher
    from bentoml._internal.runner.container import AutoContainer
    from bentoml._internal.utils.uri import join_paths
    from bentoml.exceptions import ServiceUnavailable
    from starlette.routing import Route

    router = app.router
    factory = next(
        r.endpoint.func.__self__
        for r in router.routes
        if isinstance(getattr(r, "endpoint", None), functools.partial)
        and isinstance(getattr(r.endpoint.func, "__self__", None), ServiceAppFactory)
    )
    service, instance = factory.service, factory._service_instance
    own = getattr(factory, "_penguins_own_apis", None)
    if own is None:  # the first call: what the service declared itself
        own = factory._penguins_own_apis = dict(service.apis)
        factory._penguins_added_apis = {}
    before = factory._penguins_added_apis

    def overloaded() -> None:
        raise ServiceUnavailable("process is overloaded")

    for name, method in apis.items():
        if method.batchable and name not in factory.dispatchers:
            factory.dispatchers[name] = CorkDispatcher(
                max_latency_in_ms=method.max_latency_ms,
                max_batch_size=method.max_batch_size,
                fallback=overloaded,
                get_batch_size=functools.partial(AutoContainer.get_batch_size, batch_dim=method.batch_dim[0]),
                batch_dim=method.batch_dim,
            )
        if name not in instance.__dict__:
            local = functools.partial(method.func, instance)
            local.local = local  # what the app calls: `getattr(instance, name).local`
            instance.__dict__[name] = local
    service.apis = {**own, **apis}
    factory._penguins_added_apis = dict(apis)

    kept = [r for r in router.routes if getattr(r, "name", None) not in before]
    new = [
        Route(
            join_paths(service.path_prefix, method.route),  # where BentoML puts its own (a service's `path_prefix`)
            functools.partial(factory.api_endpoint_wrapper, name),
            methods=["POST"],
            name=name,
        )
        for name, method in apis.items()
    ]
    # After the service's own API routes, before the mounted apps (a mount could match a prefix first).
    at = max((i + 1 for i, r in enumerate(kept) if getattr(r, "name", None) in own), default=len(kept))
    router.routes = [*kept[:at], *new, *kept[at:]]
    for name in before.keys() - apis.keys():
        # A request already queued in its dispatcher still finishes; the callable goes with the route.
        instance.__dict__.pop(name, None)
    return True


def bind_once(instance: Any, names: list[str]) -> None:
    """Keep each of the service's own API callers on its instance, so BentoML's non-data descriptor
    (`APIMethod.__get__`, which builds a new caller with `inspect.signature` and `functools.wraps` on every access;
    the server looks each API up twice per request) runs once per API, not per request. Patches nothing: an attribute
    of our own instance takes precedence over a non-data descriptor of its class."""
    for name in names:
        if name not in instance.__dict__:
            caller = getattr(instance, name)
            if hasattr(caller, "local"):  # the shape the server calls (`.local`); otherwise leave BentoML's
                instance.__dict__[name] = caller
