"""Every vocabulary of the contract (island, sex) names the value a misspelt or abbreviated one most likely meant, in
both request forms, at the value's own place."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from penguins.contract import EXAMPLE_COLUMNS, ISLANDS, SEXES, Penguin, PenguinColumns, closest


@pytest.mark.parametrize(
    ("value", "vocabulary", "meant"),
    [
        ("F", SEXES, "female"),
        ("m", SEXES, "male"),
        ("fem", SEXES, "female"),
        ("femal", SEXES, "female"),
        ("Biscoo", ISLANDS, "Biscoe"),
        ("torgerson", ISLANDS, "Torgersen"),
        ("Dreem", ISLANDS, "Dream"),
        ("Tor", ISLANDS, "Torgersen"),
        ("Atlantis", ISLANDS, None),
        ("xyz", SEXES, None),
        ("", SEXES, None),
    ],
)
def test_closest(value, vocabulary, meant):
    assert closest(value, vocabulary) == meant


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sex", "F", "Input should be 'female' or 'male' (not 'F': did you mean 'female'?)"),
        ("sex", "M", "Input should be 'female' or 'male' (not 'M': did you mean 'male'?)"),
        ("island", "Biscoo", "Input should be 'Biscoe', 'Dream' or 'Torgersen' (not 'Biscoo': did you mean 'Biscoe'?)"),
    ],
)
def test_a_penguin_gets_the_did_you_mean(example, field, value, message):
    with pytest.raises(ValidationError) as error:
        Penguin(**{**example, field: value})
    (detail,) = error.value.errors()
    assert (detail["loc"], detail["msg"]) == ((field,), message)


@pytest.mark.parametrize(("field", "value", "meant"), [("sex", "F", "female"), ("island", "Dreem", "Dream")])
def test_a_column_gets_it_at_the_values_index(field, value, meant):
    column = list(EXAMPLE_COLUMNS[field])
    column[1] = value
    with pytest.raises(ValidationError) as error:
        PenguinColumns(**{**EXAMPLE_COLUMNS, field: column})
    (detail,) = error.value.errors()
    assert detail["loc"] == (field, 1)
    assert detail["msg"].endswith(f"(not {value!r}: did you mean {meant!r}?)")


def test_what_is_close_to_nothing_keeps_pydantics_message(example):
    with pytest.raises(ValidationError) as error:
        Penguin(**{**example, "island": "Atlantis"})
    assert error.value.errors()[0]["msg"] == "Input should be 'Biscoe', 'Dream' or 'Torgersen'"
    with pytest.raises(ValidationError) as error:
        Penguin(**{**example, "sex": "NA"})  # the unknown sex keeps its own advice
    assert "omit the field or send null" in error.value.errors()[0]["msg"]
