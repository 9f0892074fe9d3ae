"""The published contract: the OpenAPI document (`/docs.json`) and BentoML's client schema (`/schema.json`), built
once per set of APIs, off the event loop, and served from a cache; the document made exact and readable.

Exact: every error status each operation can answer, with its body. Readable: the service's own title, description
and tags; a request body per concept (`PenguinsRequest` for every per-model endpoint, `ClassifyRequest`, ...) and
answers named for what they are (`ModelListing`, not BentoML's `ModelListingIODescriptor`); an argument's
alternatives kept (`penguins`: a list of `Penguin`s or `PenguinColumns`, which BentoML flattens to its first option);
optional fields spelled the OpenAPI 3.0 way (`nullable`).
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio.to_thread

from penguins.http.asgi import send_json
from penguins.http.routing import ASGIApp

REF_TEMPLATE = "#/components/schemas/{model}"
TAGS = [
    {
        "name": "classify",
        "description": "Species predictions: `classify` with any served model, one endpoint per model",
    },
    {"name": "explain", "description": "Why a model answers what it does"},
    {"name": "models", "description": "What is served, and serving what was trained since (`reload`)"},
    {"name": "Infrastructure", "description": "Probes and metrics"},
]
TAG_OF = {"explain": "explain", "training_map": "explain", "models": "models", "reload": "models"}

DESCRIPTION = (
    "Species classifiers for Palmer Penguins, trained with scikit-learn and served from the BentoML model store. "
    "Every error is JSON with an `error` message; see each operation's responses. The web page is at `/ui`."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "What went wrong"}},
        "required": ["error"],
    },
    "ValidationErrors": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {
                            "type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                            "description": 'Where: field names and list positions, e.g. ["penguins", 0, "island"]',
                        },
                        "msg": {"type": "string", "description": "What is wrong, with the allowed values or unit"},
                        "type": {"type": "string"},
                    },
                    "required": ["loc", "msg", "type"],
                },
            },
            "field": {"type": "string", "description": "The header or field refused, when not in detail"},
        },
        "required": ["error"],
    },
    "ModelNotServed": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "field": {"type": "string"},
            "allowed": {"type": "array", "items": {"type": "string"}, "description": "The served models' names"},
            "served_tags": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": "string", "description": "Why, when the store holds the model but does not serve it"},
            "fix": {"type": "string", "description": "The call that would serve it, when there is one"},
        },
        "required": ["error", "allowed"],
    },
    "BodyTooLarge": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "limit_bytes": {"type": "integer"}},
        "required": ["error", "limit_bytes"],
    },
    "UnsupportedMediaType": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "accepted": {"type": "array", "items": {"type": "string"}}},
        "required": ["error", "accepted"],
    },
    "Busy": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "retry_after_s": {"type": "integer"}},
        "required": ["error"],
    },
    "Unavailable": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "model": {"type": "string"},
            "not_served": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Penguin models the store holds but does not serve, and why",
            },
        },
        "required": ["error"],
    },
}


def _response(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
    if headers:
        answer["headers"] = headers
    return answer


class Documents:
    """`/docs.json` and `/schema.json` of one service, built once per set of APIs (`serve_apis` swaps `service.apis`
    whole when the routes change), in a thread: with 5 models BentoML took 53-99 ms of the event loop per request,
    with 324 models 1.7 s. Concurrent requests for a document being built wait for that one build."""

    def __init__(self, service: Any, admin_routes: tuple[str, ...] = (), conflict_routes: tuple[str, ...] = ()):
        self.service = service
        self.admin_routes = admin_routes
        self.conflict_routes = conflict_routes
        self._for: Any = None  # the `service.apis` the cached documents were built from
        self._built: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> bytes:
        """`name`: "docs" or "schema"."""
        if self._for is not self.service.apis:
            async with self._lock:
                apis = self.service.apis
                if self._for is not apis:
                    self._built = await anyio.to_thread.run_sync(self.build, apis)
                    self._for = apis
        return self._built[name]

    def build(self, apis: dict[str, Any]) -> dict[str, bytes]:
        generated = json.loads(json.dumps(self.service.openapi_spec.asdict()))  # as BentoML serves it: string keys
        spec = exact_spec(generated, apis, self.admin_routes, self.conflict_routes)
        schema = client_schema(self.service.schema(), apis)
        return {"docs": json.dumps(spec).encode(), "schema": json.dumps(schema).encode()}


class Published:
    """Answers `GET /docs.json` and `/schema.json` from `Documents`; inside the gateway, so that the routes a reload
    changed are in place before the documents are looked up."""

    def __init__(
        self, app: ASGIApp, service: Any, admin_routes: tuple[str, ...] = (), conflict_routes: tuple[str, ...] = ()
    ):
        self.app = app
        self.documents = Documents(service, admin_routes, conflict_routes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = PATHS.get(scope["path"]) if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") else None
        if name is None:
            return await self.app(scope, receive, send)
        body = await self.documents.get(name)
        await send_json(send, 200, b"" if scope["method"] == "HEAD" else body, len(body))


PATHS = {"/docs.json": "docs", "/schema.json": "schema"}


def client_schema(schema: dict[str, Any], apis: dict[str, Any]) -> dict[str, Any]:
    """BentoML's `/schema.json` (what its Python client encodes arguments by), with each argument's alternatives
    kept: BentoML flattens an `anyOf` to its first option, so `penguins` read as a list only, and the client broke a
    `penguins` given as one list per field apart key by key. An argument with alternatives is published inline as
    `anyOf`, which the client passes through as given."""
    for route in schema.get("routes", []):
        api = apis.get(route.get("name"))
        properties = route.get("input", {}).get("properties")
        if api is None or not isinstance(properties, dict):
            continue
        generated = api.input_spec.model_json_schema()
        definitions = generated.get("$defs", {})
        for key, field in generated.get("properties", {}).items():
            options = [o for o in field.get("anyOf", []) if o != {"type": "null"}]
            if key in properties and len(options) > 1:
                rest = {k: v for k, v in properties[key].items() if k in ("title", "description")}
                properties[key] = {**rest, "anyOf": [_inline(option, definitions) for option in options]}
    return schema


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with every `$ref` into `definitions` replaced by what it names (the client reads no references)."""
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def exact_spec(
    spec: dict[str, Any],
    apis: dict[str, Any] | None = None,
    admin_routes: tuple[str, ...] = (),
    conflict_routes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """BentoML's generated document, made true to what the service answers and named for what it carries.

    Each POST operation BentoML generated (marked `x-bentoml-name`; `apis`: name -> APIMethod) declares 400 (its
    `detail` a list), 413 and 415; one that takes input also 429 (bulk limit) and 503 (no model loaded); one with a
    `model` field 404 (with the served names); `admin_routes` 401 with the bearer scheme; `conflict_routes` 409.
    BentoML's 500 and its string `detail` go.
    """
    spec["info"] = {"title": "Palmer Penguins classifier", "version": package_version(), "description": DESCRIPTION}
    spec["tags"] = TAGS
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(ERROR_SCHEMAS)
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if isinstance(operation, dict) and "x-bentoml-name" not in operation and operation.get("tags"):
                operation["tags"] = ["Infrastructure"]  # BentoML's probes; its POST APIs are retagged below
        operation = item.get("post")
        if not operation or "x-bentoml-name" not in operation:
            continue
        name = operation["x-bentoml-name"]
        operation["tags"] = [TAG_OF.get(name, "classify")]
        operation["operationId"] = name  # a generated client's function: `classify_svm`, not BentoML's prefixed id
        api = (apis or {}).get(name)
        if api is not None:
            _name_bodies(operation, api, schemas)
        fields, required = _input_properties(operation, schemas)
        if required:  # without it no body at all would be a valid request
            operation["requestBody"]["required"] = True
        operation["responses"] = _responses(operation, path, fields, admin_routes, conflict_routes, components)
    readyz = spec.get("paths", {}).get("/readyz", {}).get("get")
    if readyz is not None:
        readyz.setdefault("responses", {})["503"] = {
            "description": "Not ready: no model loaded yet",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    for schema in schemas.values():
        _nullable_properties(schema)
    _drop_unreferenced(spec)
    return spec


def _responses(
    operation: dict[str, Any],
    path: str,
    fields: set[str],
    admin_routes: tuple[str, ...],
    conflict_routes: tuple[str, ...],
    components: dict[str, Any],
) -> dict[str, Any]:
    responses = {k: v for k, v in operation.get("responses", {}).items() if k == "200"}
    responses["400"] = _response("Invalid input: `detail` names each field and what is wrong", "ValidationErrors")
    responses["413"] = _response("The request body is over the size limit", "BodyTooLarge")
    responses["415"] = _response("The request body is not JSON", "UnsupportedMediaType")
    if fields:
        responses["429"] = _response(
            "Too many bulk requests at once: retry after the time given",
            "Busy",
            {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
        )
        responses["503"] = _response("No model is loaded to answer (train one and reload)", "Unavailable")
    if "model" in fields or operation.get("x-bentoml-name", "").startswith("classify_"):
        responses["404"] = _response("The model named is not served: `allowed` lists those that are", "ModelNotServed")
    if path in conflict_routes:
        responses["409"] = _response("The model was saved without explanation data: retrain it", "Error")
    if path in admin_routes:
        responses["401"] = _response(
            "The admin bearer token is missing or wrong",
            "Error",
            {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
        )
        operation["security"] = [{"adminToken": []}]
        components.setdefault("securitySchemes", {})["adminToken"] = {"type": "http", "scheme": "bearer"}
    return dict(sorted(responses.items()))


def _name_bodies(operation: dict[str, Any], api: Any, schemas: dict[str, Any]) -> None:
    """The request body and the answer as named components, generated from the API's own pydantic models (so that an
    argument's alternatives survive BentoML's flattening), one component per concept."""
    request = api.input_spec.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
    for name, definition in request.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    properties = request.get("properties", {})
    if not properties:
        operation.pop("requestBody", None)  # takes nothing: no body to describe (an empty one is accepted)
    else:
        name = "PenguinsRequest" if set(properties) == {"penguins"} else _camel(api.name) + "Request"
        schemas[name] = {**request, "title": name}
        operation["requestBody"] = {"content": {"application/json": {"schema": _ref(name)}}}
    answer = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
    title = answer.get("schema", {}).get("title", "")
    if title.endswith("IODescriptor"):  # a pydantic model answer: BentoML's wrapper class, inlined
        name = title.removesuffix("IODescriptor")
        output = api.output_spec.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
        output.pop("$defs", None)  # BentoML's components have them
        schemas[name] = {**output, "title": name}
        answer["schema"] = _ref(name)


def _nullable_properties(schema: dict[str, Any]) -> None:
    """Each property's `anyOf` as OpenAPI 3.0 has it: alternatives kept; `X | None` as X with `nullable` (a `$ref`
    through `allOf`, since a `$ref`'s siblings are ignored)."""
    for key, field in list(schema.get("properties", {}).items()):
        options = field.get("anyOf") if isinstance(field, dict) else None
        if not isinstance(options, list):
            continue
        others = [option for option in options if option != {"type": "null"}]
        rest = {k: v for k, v in field.items() if k != "anyOf"}
        if len(others) < len(options):
            rest["nullable"] = True
        if len(others) > 1:
            schema["properties"][key] = {**rest, "anyOf": others}
        elif others:
            option = others[0]
            schema["properties"][key] = {**rest, "allOf": [option]} if "$ref" in option else {**option, **rest}


def _drop_unreferenced(spec: dict[str, Any]) -> None:
    """Components nothing refers to any more (BentoML's `*__Input`, `*IODescriptor` and error bodies)."""
    schemas = spec["components"]["schemas"]
    while True:
        text = json.dumps([spec["paths"], {k: v for k, v in schemas.items()}])
        used = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
        unused = [name for name in schemas if name not in used]
        if not unused:
            return
        for name in unused:
            schemas.pop(name)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _input_properties(operation: dict[str, Any], schemas: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The input's field names and its required ones."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {})), list(schema.get("required", []))


@cache
def package_version() -> str:
    try:
        return version("penguins")
    except PackageNotFoundError:  # a bento without the package's metadata: read pyproject.toml beside the code
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"
