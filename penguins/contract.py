"""The penguin contract: vocabularies, feature lists and the API's input and output models.

Training, serving, notebooks and tests import these names; nothing else spells a feature or a species.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

SPECIES: tuple[str, ...] = ("Adelie", "Chinstrap", "Gentoo")
ISLANDS: tuple[str, ...] = ("Biscoe", "Dream", "Torgersen")
SEXES: tuple[str, ...] = ("female", "male")

Species = Literal["Adelie", "Chinstrap", "Gentoo"]
Island = Literal["Biscoe", "Dream", "Torgersen"]
Sex = Literal["female", "male"]
assert get_args(Species) == SPECIES and get_args(Island) == ISLANDS and get_args(Sex) == SEXES

TARGET = "species"
CATEGORICAL_FEATURES: tuple[str, ...] = ("island", "sex")
NUMERIC_FEATURES: tuple[str, ...] = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
FEATURES: tuple[str, ...] = (*CATEGORICAL_FEATURES, *NUMERIC_FEATURES)

EXAMPLE_PENGUIN: dict[str, Any] = {
    "island": "Biscoe",
    "bill_length_mm": 46.1,
    "bill_depth_mm": 13.2,
    "flipper_length_mm": 211.0,
    "body_mass_g": 4500.0,
    "sex": "female",
}


# What people send for an unknown sex, from spreadsheets and R (`NA`): the answer is to leave the field out.
_UNKNOWN_SEX = {"", "na", "n/a", "nan", "none", "null", "unknown", "?", ".", "-"}


def _normaliser(vocabulary: tuple[str, ...], field: str, suggest: bool = True):
    """Accept any letter case ("dream", "MALE") and hand pydantic the canonical spelling; say what is wrong with the
    usual mistakes (a numeric code, "NA" for an unknown sex, a misspelling or abbreviation: did you mean) instead of
    only listing the allowed values. `suggest=False` leaves a misspelling to pydantic (see `_canonical_column`)."""
    lookup = {value.lower(): value for value in vocabulary}
    quoted = [f"'{v}'" for v in vocabulary]
    allowed = f"{', '.join(quoted[:-1])} or {quoted[-1]}"  # as pydantic's own message spells it
    optional = field == "sex"
    unknown = "; when it is unknown, omit the field or send null" if optional else ""

    def normalise(value: Any) -> Any:
        if isinstance(value, str):
            canonical = lookup.get(value.strip().lower())
            if canonical is not None:
                return canonical
            if optional and value.strip().lower() in _UNKNOWN_SEX:
                raise PydanticCustomError("literal_error", f"Input should be {allowed}{unknown} (not {value!r})")
            if suggest and (error := _suggestion(value, vocabulary, allowed)) is not None:
                raise error
        elif isinstance(value, int | float):  # bool too: true/false is no island or sex either
            raise PydanticCustomError(
                "literal_error", f"Input should be {allowed}: the {field} by name, not a numeric code{unknown}"
            )
        return value

    normalise.allowed = allowed  # type: ignore[attr-defined]
    return normalise


def closest(value: str, vocabulary: Sequence[str]) -> str | None:
    """The one word of `vocabulary` that `value` most likely meant, any letter case: the only one it abbreviates
    ("F" -> "female", "Tor" -> "Torgersen"), else the closest spelling ("Biscoo" -> "Biscoe"); None when none is
    close enough to name."""
    typed = value.strip().lower()
    if not typed:
        return None
    lookup = {word.lower(): word for word in vocabulary}
    prefixed = [word for lower, word in lookup.items() if lower.startswith(typed)]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(typed, list(lookup), n=1, cutoff=0.6)
    return lookup[close[0]] if close else None


def _suggestion(value: Any, vocabulary: tuple[str, ...], allowed: str) -> PydanticCustomError | None:
    close = closest(value, vocabulary) if isinstance(value, str) else None
    if close is None:
        return None
    return PydanticCustomError("literal_error", f"Input should be {allowed} (not {value!r}: did you mean {close!r}?)")


def _canonical(vocabulary: tuple[str, ...], field: str):
    return BeforeValidator(_normaliser(vocabulary, field))


def _canonical_column(vocabulary: tuple[str, ...], field: str):
    """`_canonical` for a whole column in one Python pass: per value it would be one validator call each. A
    misspelt value is left to pydantic, whose error names its index, and its message then gets the did-you-mean."""
    normalise = _normaliser(vocabulary, field, suggest=False)

    def validate(values: Any, handler: Any) -> Any:
        try:
            return handler([normalise(v) for v in values] if isinstance(values, list) else values)
        except ValidationError as error:
            errors = error.errors()
            hints = [
                e["type"] == "literal_error" and _suggestion(e["input"], vocabulary, normalise.allowed) for e in errors
            ]
            if not any(hints):
                raise
            details = [
                InitErrorDetails(type=hint or PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e["input"])
                for e, hint in zip(errors, hints, strict=True)
            ]
            raise ValidationError.from_exception_data(error.title, details) from None

    return WrapValidator(validate)


def _measurement(lower: float, upper: float, unit: str, what: str, other_unit: tuple[str, float]) -> Any:
    """A measurement in `unit`, refused outside [lower, upper] with the unit in the message; booleans are refused (JSON
    `true` would otherwise pass as 1.0), and so are NaN and infinity. A value that fits once converted from
    `other_unit` (name, factor to `unit`) is named as the probable mistake."""
    other, factor = other_unit

    def refuse_bool(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("float_type", f"Input should be a number ({what} in {unit}), not true/false")
        return value

    def bounded(value: float) -> float:
        if lower <= value <= upper:
            return value
        side = f"at least {lower:g}" if value < lower else f"at most {upper:g}"
        hint = (
            f" ({value:g} looks like {other}: {value * factor:g} {unit}?)" if lower <= value * factor <= upper else ""
        )
        kind = "greater_than_equal" if value < lower else "less_than_equal"
        raise PydanticCustomError(kind, f"Input should be {side} {unit}: {what} is in {unit}{hint}")

    return (
        BeforeValidator(refuse_bool),
        Field(
            allow_inf_nan=False,
            description=f"{what.capitalize()} in {unit}, from {lower:g} to {upper:g}",
            json_schema_extra={"minimum": lower, "maximum": upper},
        ),
        AfterValidator(bounded),
    )


# Plausible bounds for an adult penguin's measurements. The lower ones are about a third of the smallest value in the
# Palmer data (bill 32.1 mm, depth 13.1 mm, flipper 172 mm, mass 2700 g): wide, yet they refuse the same penguin
# measured in cm or kg. The upper ones are well above the largest (59.6 mm, 21.5 mm, 231 mm, 6300 g) and refuse
# absurd values. tests/test_contract.py checks them against the data.
BOUNDS: dict[str, tuple[float, float]] = {
    "bill_length_mm": (10, 100),
    "bill_depth_mm": (4, 50),
    "flipper_length_mm": (50, 350),
    "body_mass_g": (900, 10_000),
}
_MM = ("centimetres", 10.0)


def unknown_field_message(name: str, allowed: tuple[str, ...] | list[str]) -> str:
    """Why a field is refused: its name, the closest allowed one, and what one-hot columns should be instead."""
    message = f"Unknown field {name!r}"
    for categorical in CATEGORICAL_FEATURES:
        if name.lower().startswith(f"{categorical}_") and categorical in allowed:
            value = name[len(categorical) + 1 :]
            return f'{message}: send {categorical!r} once, by name ("{categorical}": "{value}"), not one-hot columns'
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6) or difflib.get_close_matches(
        name.lower(), allowed, n=1, cutoff=0.6
    )
    if close:
        return f"{message}: did you mean {close[0]!r}?"
    return f"{message}; allowed: {', '.join(allowed)}"


def _openapi_3_0(schema: dict[str, Any]) -> None:
    """Spell the schema the way the OpenAPI 3.0 document that carries it expects.

    BentoML 1.4.39 publishes pydantic's JSON Schema (draft 2020-12) inside an `openapi: 3.0.2` document; two
    constructs differ there, and client generators and schema-driven test tools reject the draft spelling:
    a numeric `exclusiveMinimum` (3.0: `minimum` plus `exclusiveMinimum: true`) and `{"type": "null"}` in `anyOf`
    (3.0: `nullable: true`, with null in the enum of a nullable enum).
    """
    for field in schema.get("properties", {}).values():
        _openapi_3_0_field(field)
        if isinstance(field.get("items"), dict):  # a column: the same rules, per value
            _openapi_3_0_field(field["items"])


def _openapi_3_0_field(field: dict[str, Any]) -> None:
    bound = field.get("exclusiveMinimum")
    if bound is not None and not isinstance(bound, bool):
        field["minimum"], field["exclusiveMinimum"] = bound, True
    options = field.get("anyOf", [])
    if {"type": "null"} in options and len(options) == 2:
        del field["anyOf"]
        field.update(next(o for o in options if o != {"type": "null"}), nullable=True)
        if "enum" in field and None not in field["enum"]:  # 3.0.3: a nullable enum lists null to allow it
            field["enum"] = [*field["enum"], None]


# One penguin's fields, each with its rules: `Penguin` holds one value of each, `PenguinColumns` a list of each.
BillLength = Annotated[float, *_measurement(*BOUNDS["bill_length_mm"], "mm", "bill length", _MM)]
BillDepth = Annotated[float, *_measurement(*BOUNDS["bill_depth_mm"], "mm", "bill depth", _MM)]
FlipperLength = Annotated[float, *_measurement(*BOUNDS["flipper_length_mm"], "mm", "flipper length", _MM)]
BodyMass = Annotated[float, *_measurement(*BOUNDS["body_mass_g"], "g", "body mass", ("kilograms", 1000.0))]
ISLAND_HELP = "Island where the penguin was seen"
SEX_HELP = "male or female; leave out (or null) when unknown: the model imputes it"


class Penguin(BaseModel):
    """One penguin's measurements, as recorded in the field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _openapi_3_0(schema) or schema.update(example=EXAMPLE_PENGUIN),
    )

    island: Annotated[Island, _canonical(ISLANDS, "island")] = Field(description=ISLAND_HELP)
    bill_length_mm: BillLength
    bill_depth_mm: BillDepth
    flipper_length_mm: FlipperLength
    body_mass_g: BodyMass
    sex: Annotated[Sex | None, _canonical(SEXES, "sex")] = Field(default=None, description=SEX_HELP)

    @model_validator(mode="before")
    @classmethod
    def _one_penguin(cls, data: Any) -> Any:
        if isinstance(data, list):
            raise PydanticCustomError("model_type", "Input should be one penguin (an object), not a list")
        return data


EXAMPLE_COLUMNS: dict[str, list[Any]] = {
    feature: [EXAMPLE_PENGUIN[feature], value]
    for feature, value in zip(FEATURES, ("Dream", "male", 39.5, 17.4, 186.0, 3800.0), strict=True)
}


class PenguinColumns(BaseModel):
    """Penguins as one list per field, the i-th value of each list being the i-th penguin's (the form MLServer's
    and KServe's requests take): the same rules as `Penguin` per value, much cheaper to send and check for many
    penguins. `sex` may be left out (every penguin's is unknown) or hold null for an unknown one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _openapi_3_0(schema) or schema.update(example=EXAMPLE_COLUMNS),
    )

    # min_length: no column is empty (there is at least one penguin), which the published schema says too.
    island: Annotated[list[Island], _canonical_column(ISLANDS, "island")] = Field(description=ISLAND_HELP, min_length=1)
    bill_length_mm: list[BillLength] = Field(min_length=1)
    bill_depth_mm: list[BillDepth] = Field(min_length=1)
    flipper_length_mm: list[FlipperLength] = Field(min_length=1)
    body_mass_g: list[BodyMass] = Field(min_length=1)
    sex: Annotated[list[Sex | None] | None, _canonical_column(SEXES, "sex")] = Field(
        default=None, description=SEX_HELP, min_length=1
    )

    def __len__(self) -> int:
        return len(self.island)

    def columns(self) -> dict[str, list[Any]]:
        """Every feature's values in contract order (`sex` all None when it was left out)."""
        sex = self.sex if self.sex is not None else [None] * len(self.island)
        return {feature: sex if feature == "sex" else getattr(self, feature) for feature in FEATURES}


class PenguinRows(list):
    """Penguins from a `PenguinColumns` request: a list (what BentoML's batching concatenates and slices) of one tuple
    per penguin in `FEATURES` order, which also keeps the columns it came from, for a predictor to take as they
    are."""

    def __init__(self, columns: dict[str, list[Any]]):
        super().__init__(zip(*(columns[f] for f in FEATURES), strict=True))
        self.columns = columns


_ROWS: dict[int, TypeAdapter] = {}
_COLUMNS = TypeAdapter(PenguinColumns)


def penguins_field(max_penguins: int) -> Any:
    """The type of a request's `penguins`: a list of `Penguin` rows or one `PenguinColumns`, 1 to `max_penguins`.

    Validated as rows or as columns by the JSON type given (array or object), so that an error names the place as
    that form spells it (`["penguins", 3, "island"]`, `["penguins", "island", 3]`), never both forms' errors at once;
    the published schema is the union of the two. Columns arrive as `PenguinRows`.
    """
    rows_type = Annotated[list[Penguin], Field(min_length=1, max_length=max_penguins)]
    rows = _ROWS.setdefault(max_penguins, TypeAdapter(rows_type))

    def validate(value: Any, handler: Any, info: ValidationInfo) -> Sequence[Any]:
        if not isinstance(value, dict | PenguinColumns):
            return rows.validate_python(value)
        if isinstance(value, dict) and value and not any(isinstance(v, list) for v in value.values()):
            raise PydanticCustomError(
                "list_type",
                "Input should be a list of penguins: wrap a single penguin in [ ], or send one list per field",
            )
        columns = _COLUMNS.validate_python(value)
        lengths = {feature: len(v) for feature, v in columns.columns().items()}
        if len(set(lengths.values())) != 1:
            raise PydanticCustomError(
                "column_lengths",
                "every column must hold one value per penguin; lengths: {lengths}",
                {"lengths": str(lengths)},
            )
        if not 1 <= len(columns) <= max_penguins:
            raise PydanticCustomError(
                "column_length",
                "columns must hold 1 to {most} penguins, not {n}",
                {"most": max_penguins, "n": len(columns)},
            )
        return PenguinRows(columns.columns())

    return Annotated[
        rows_type | PenguinColumns,
        WrapValidator(validate),
        Field(description="Penguins to classify: a list of penguins, or one list per field"),
    ]


class Prediction(BaseModel):
    """The species one model predicts for one penguin."""

    species: Species
    probabilities: dict[Species, float] = Field(description="Probability of each species; they sum to 1")
    model: str = Field(description="Tag (name:version) of the model that answered")
