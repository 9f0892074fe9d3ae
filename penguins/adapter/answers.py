"""How BentoML reads a request into an API's input and writes its answer: validation off the event loop (keeping what
was validated for the prediction log), and answers sent as our code built them."""

from __future__ import annotations

from typing import Any

from penguins.adapter.guard import Target, fits, fix, mark

# Where `validate_off_the_loop` leaves what BentoML validated, in the request's ASGI scope, for the prediction log.
VALIDATED = "penguins.validated"
VALIDATED_JSON = "penguins.validated_json"
# Put in the `Annotated[...]` of an API's output type: BentoML then sends what the API returns as JSON as it is,
# without validating it against that type again (`send_answers_as_returned`).
AS_RETURNED = "penguins: sent as returned"

VALIDATE_OFF_THE_LOOP = fix(
    "validate_off_the_loop",
    "bentoml",
    [
        Target("_bentoml_impl.serde", "JSONSerde.parse_request", ("self", "request", "cls"), uses=("body",)),
        Target("_bentoml_sdk.io_models", "IORootModel.multipart_fields"),
    ],
    upstream="none filed: docs/upstream.md#validate_off_the_loop",
    what="big JSON bodies are validated on the event loop, every other client waiting meanwhile",
)
SEND_ANSWERS_AS_RETURNED = fix(
    "send_answers_as_returned",
    "bentoml",
    [Target("_bentoml_sdk.io_models", "IOMixin.to_http_response", ("obj", "serde"), uses=("media_type",))],
    upstream="none filed: docs/upstream.md#send_answers_as_returned",
    what="a list answer is validated, dumped to Python, dumped again in JSON mode and encoded: four passes",
)


def validate_off_the_loop(min_bytes: int, keep_json: bool = True) -> None:
    """Validate a big JSON body in a thread, and keep what was validated (BentoML 1.4, JSONSerde.parse_request).

    BentoML validates the body on the event loop: 10,000 penguins took 35-150 ms, during which no other request
    moved. From `min_bytes` on, it runs in a thread. The validated input is left in the request's scope
    (`VALIDATED`), so that the prediction log writes what was validated, never the raw request text; with `keep_json`
    a big one is also serialised there, in the thread (`VALIDATED_JSON`).
    """
    if not fits(VALIDATE_OFF_THE_LOOP.name):
        return
    import anyio.to_thread
    from _bentoml_impl.serde import JSONSerde
    from _bentoml_sdk.io_models import IORootModel

    original = getattr(JSONSerde.parse_request, "__penguins_original__", JSONSerde.parse_request)

    async def parse_request(self: JSONSerde, request: Any, cls: type) -> Any:
        if issubclass(cls, IORootModel) and cls.multipart_fields:  # BentoML's own path (files by URL)
            return await original(self, request, cls)
        body = await request.body() or b"{}"
        if len(body) < min_bytes:
            model = cls.model_validate_json(body)
        else:

            def validate() -> Any:
                validated = cls.model_validate_json(body)
                if keep_json:
                    request.scope[VALIDATED_JSON] = validated.__pydantic_serializer__.to_json(validated)
                return validated

            model = await anyio.to_thread.run_sync(validate)
        request.scope[VALIDATED] = model
        return model

    JSONSerde.parse_request = mark(parse_request, original, "validates_off_the_loop")


def send_answers_as_returned() -> None:
    """Send an API's answer as the JSON it is when its output type is marked `AS_RETURNED`.

    For an output typed `list[...]` BentoML validates the returned list against that type, dumps it to Python, dumps
    it again in JSON mode and encodes that (`IOMixin.to_http_response`, `IORootModel.model_dump_json`): four passes
    over an answer our own code built from the model's arrays, ~100 ms of a 10,000-penguin request.
    """
    if not fits(SEND_ANSWERS_AS_RETURNED.name):
        return
    from _bentoml_sdk.io_models import IOMixin, IORootModel
    from pydantic_core import to_json
    from starlette.responses import Response

    original = IOMixin.__dict__["to_http_response"]
    if getattr(original.__func__, "sends_as_returned", False):
        return
    bound = IOMixin.to_http_response  # what the guard judges: (obj, serde), as BentoML calls it
    marked: dict[type, bool] = {}

    def is_marked(cls: type) -> bool:
        if cls not in marked:
            field = getattr(cls, "model_fields", {}).get("root") if issubclass(cls, IORootModel) else None
            marked[cls] = field is not None and AS_RETURNED in field.metadata
        return marked[cls]

    async def to_http_response(cls: type, obj: Any, serde: Any) -> Any:
        if isinstance(obj, list) and getattr(serde, "media_type", None) == "application/json" and is_marked(cls):
            return Response(to_json(obj), media_type="application/json")
        return await original.__func__(cls, obj, serde)

    IOMixin.to_http_response = classmethod(mark(to_http_response, bound, "sends_as_returned"))
