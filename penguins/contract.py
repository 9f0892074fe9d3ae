"""The penguin contract: vocabularies, feature lists and the API's input and output models.

Training, serving, notebooks and tests import these names; nothing else spells a feature or a species.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationInfo, WrapValidator
from pydantic_core import PydanticCustomError

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


def _normaliser(vocabulary: tuple[str, ...]):
    lookup = {value.lower(): value for value in vocabulary}

    def normalise(value: Any) -> Any:
        if isinstance(value, str):
            return lookup.get(value.strip().lower(), value)
        return value

    return normalise


def _canonical(vocabulary: tuple[str, ...]):
    """Accept any letter case ("dream", "MALE") and hand pydantic the canonical spelling."""
    return BeforeValidator(_normaliser(vocabulary))


def _canonical_column(vocabulary: tuple[str, ...]):
    """`_canonical` for a whole column in one Python pass: per value it would be one validator call each."""
    normalise = _normaliser(vocabulary)
    return BeforeValidator(lambda values: [normalise(v) for v in values] if isinstance(values, list) else values)


def _measurement(upper: float, unit: str) -> Any:
    # Upper bounds sit well above anything recorded (max bill 59.6 mm, flipper 231 mm, mass 6300 g) and reject
    # unit mix-ups (kg, cm) and absurd values; NaN and infinity are refused.
    return Field(gt=0, le=upper, allow_inf_nan=False, description=f"{unit}, greater than 0 and at most {upper:g}")


def _openapi_3_0(schema: dict[str, Any]) -> None:
    """Spell the schema the way the OpenAPI 3.0 document that carries it expects.

    BentoML 1.4.39 publishes pydantic's JSON Schema (draft 2020-12) inside an `openapi: 3.0.2` document; two
    constructs differ there, and client generators and schema-driven test tools reject the draft spelling:
    a numeric `exclusiveMinimum` (3.0: `minimum` plus `exclusiveMinimum: true`) and `{"type": "null"}` in `anyOf`
    (3.0: `nullable: true`).
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


# One penguin's fields, each with its rules: `Penguin` holds one value of each, `PenguinColumns` a list of each.
BillLength = Annotated[float, _measurement(100, "Bill length in mm")]
BillDepth = Annotated[float, _measurement(50, "Bill depth in mm")]
FlipperLength = Annotated[float, _measurement(350, "Flipper length in mm")]
BodyMass = Annotated[float, _measurement(10_000, "Body mass in g")]
ISLAND_HELP = "Island where the penguin was seen"
SEX_HELP = "male or female; leave out when unknown (the model imputes it)"


class Penguin(BaseModel):
    """One penguin's measurements, as recorded in the field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _openapi_3_0(schema) or schema.update(example=EXAMPLE_PENGUIN),
    )

    island: Annotated[Island, _canonical(ISLANDS)] = Field(description=ISLAND_HELP)
    bill_length_mm: BillLength
    bill_depth_mm: BillDepth
    flipper_length_mm: FlipperLength
    body_mass_g: BodyMass
    sex: Annotated[Sex | None, _canonical(SEXES)] = Field(default=None, description=SEX_HELP)


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

    island: Annotated[list[Island], _canonical_column(ISLANDS)] = Field(description=ISLAND_HELP)
    bill_length_mm: list[BillLength]
    bill_depth_mm: list[BillDepth]
    flipper_length_mm: list[FlipperLength]
    body_mass_g: list[BodyMass]
    sex: Annotated[list[Sex | None] | None, _canonical_column(SEXES)] = Field(default=None, description=SEX_HELP)

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
