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


class Penguin(BaseModel):
    """One penguin's measurements, as recorded in the field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_PENGUIN})

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
