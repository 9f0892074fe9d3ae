"""Unit tests of the penguin contract: what the API accepts and refuses."""

import math

import pytest
from pydantic import ValidationError

from penguins.contract import (
    BOUNDS,
    EXAMPLE_PENGUIN,
    FEATURES,
    ISLANDS,
    NUMERIC_FEATURES,
    SEXES,
    SPECIES,
    Penguin,
    Prediction,
    unknown_field_message,
)


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


def _message(example, **change) -> str:
    with pytest.raises(ValidationError) as error:
        Penguin.model_validate({**example, **change})
    (detail,) = error.value.errors()
    return detail["msg"]


def test_booleans_are_not_measurements(example):
    for field in NUMERIC_FEATURES:
        assert "not true/false" in _message(example, **{field: True})


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("body_mass_g", 4.5, "at least 900 g: body mass is in g (4.5 looks like kilograms: 4500 g?)"),
        ("bill_length_mm", 4.61, "at least 10 mm: bill length is in mm (4.61 looks like centimetres: 46.1 mm?)"),
        ("bill_depth_mm", 1.32, "at least 4 mm"),
        ("flipper_length_mm", 21.1, "at least 50 mm"),
        ("flipper_length_mm", 2110, "at most 350 mm"),
    ],
)
def test_a_measurement_in_the_wrong_unit_is_refused_saying_the_unit(example, field, value, words):
    assert words in _message(example, **{field: value})


def test_the_bounds_are_wide_around_the_data(frame):
    # Every recorded penguin passes with room to spare; the same penguins in cm or kg would not.
    factor = {"body_mass_g": 1000}
    for field, (lower, upper) in BOUNDS.items():
        assert lower * 2.5 <= frame[field].min() and frame[field].max() * 1.5 <= upper, field
        assert frame[field].max() / factor.get(field, 10) < lower, field


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"island": 1}, "the island by name, not a numeric code"),
        ({"sex": 0}, "the sex by name, not a numeric code"),
        ({"sex": "NA"}, "when it is unknown, omit the field or send null"),
        ({"sex": ""}, "when it is unknown, omit the field or send null"),
    ],
)
def test_course_project_mistakes_get_a_hint(example, change, words):
    assert words in _message(example, **change)


def test_a_list_where_one_penguin_is_expected_is_named(example):
    with pytest.raises(ValidationError, match="one penguin"):
        Penguin.model_validate([example])


@pytest.mark.parametrize(
    ("name", "allowed", "words"),
    [
        ("island_Biscoe", FEATURES, """send 'island' once, by name ("island": "Biscoe"), not one-hot"""),
        ("sex_male", FEATURES, "send 'sex' once"),
        ("bill_length", FEATURES, "did you mean 'bill_length_mm'?"),
        ("modle", ("penguins", "model"), "did you mean 'model'?"),
        ("pad", ("penguins", "model"), "allowed: penguins, model"),
    ],
)
def test_unknown_fields_are_named_with_the_closest_allowed_one(name, allowed, words):
    message = unknown_field_message(name, allowed)
    assert message.startswith(f"Unknown field {name!r}") and words in message
