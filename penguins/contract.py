"""The penguin contract: vocabularies, feature lists and the API's input and output models.

Training, serving, notebooks and tests import these names; nothing else spells a feature or a species.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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


def _canonical(vocabulary: tuple[str, ...]):
    """Accept any letter case ("dream", "MALE") and hand pydantic the canonical spelling."""
    lookup = {value.lower(): value for value in vocabulary}

    def normalise(value: Any) -> Any:
        if isinstance(value, str):
            return lookup.get(value.strip().lower(), value)
        return value

    return BeforeValidator(normalise)


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
        bound = field.get("exclusiveMinimum")
        if bound is not None and not isinstance(bound, bool):
            field["minimum"], field["exclusiveMinimum"] = bound, True
        options = field.get("anyOf", [])
        if {"type": "null"} in options and len(options) == 2:
            del field["anyOf"]
            field.update(next(o for o in options if o != {"type": "null"}), nullable=True)


class Penguin(BaseModel):
    """One penguin's measurements, as recorded in the field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _openapi_3_0(schema) or schema.update(example=EXAMPLE_PENGUIN),
    )

    island: Annotated[Island, _canonical(ISLANDS)] = Field(description="Island where the penguin was seen")
    bill_length_mm: Annotated[float, _measurement(100, "Bill length in mm")]
    bill_depth_mm: Annotated[float, _measurement(50, "Bill depth in mm")]
    flipper_length_mm: Annotated[float, _measurement(350, "Flipper length in mm")]
    body_mass_g: Annotated[float, _measurement(10_000, "Body mass in g")]
    sex: Annotated[Sex | None, _canonical(SEXES)] = Field(
        default=None, description="male or female; leave out when unknown (the model imputes it)"
    )


class Prediction(BaseModel):
    """The species one model predicts for one penguin."""

    species: Species
    probabilities: dict[Species, float] = Field(description="Probability of each species; they sum to 1")
    model: str = Field(description="Tag (name:version) of the model that answered")
