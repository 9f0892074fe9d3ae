"""Unit tests of the penguin contract: what the API accepts and refuses."""

import math

import pytest
from pydantic import ValidationError

from penguins.contract import EXAMPLE_PENGUIN, FEATURES, ISLANDS, SEXES, SPECIES, Penguin, Prediction


def test_example_penguin_is_valid_and_in_the_schema():
    assert Penguin(**EXAMPLE_PENGUIN).island == "Biscoe"
    assert Penguin.model_json_schema()["example"] == EXAMPLE_PENGUIN


def test_features_are_the_model_fields():
    assert set(Penguin.model_fields) == set(FEATURES) and len(FEATURES) == 6
    assert SPECIES == ("Adelie", "Chinstrap", "Gentoo") and ISLANDS == ("Biscoe", "Dream", "Torgersen")
    assert SEXES == ("female", "male")


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("island", "dream", "Dream"),
        ("island", " TORGERSEN ", "Torgersen"),
        ("sex", "Male", "male"),
        ("sex", "FEMALE", "female"),
    ],
)
def test_vocabularies_are_case_insensitive(example, field, given, stored):
    assert getattr(Penguin(**{**example, field: given}), field) == stored


def test_sex_is_optional(example):
    example.pop("sex")
    assert Penguin(**example).sex is None
    assert Penguin(**{**example, "sex": None}).sex is None


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("island", "Mars", "'Biscoe', 'Dream' or 'Torgersen'"), ("sex", "unknown", "'female' or 'male'")],
)
def test_unknown_category_names_field_and_allowed_values(example, field, value, allowed):
    with pytest.raises(ValidationError) as error:
        Penguin(**{**example, field: value})
    (detail,) = error.value.errors()
    assert detail["loc"] == (field,)
    assert allowed in detail["msg"]


@pytest.mark.parametrize("field", ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"])
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, 1e9, "long"])
def test_measurements_must_be_positive_finite_and_plausible(example, field, value):
    with pytest.raises(ValidationError) as error:
        Penguin(**{**example, field: value})
    assert error.value.errors()[0]["loc"] == (field,)


def test_unknown_and_missing_fields_are_rejected(example):
    with pytest.raises(ValidationError, match="beak_colour"):
        Penguin(**example, beak_colour="orange")
    example.pop("bill_depth_mm")
    with pytest.raises(ValidationError, match="bill_depth_mm"):
        Penguin(**example)


def test_prediction_refuses_an_unknown_species():
    with pytest.raises(ValidationError):
        Prediction(species="Emperor", probabilities={"Emperor": 1.0}, model="m:v")
