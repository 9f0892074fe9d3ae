"""The training data: Palmer Penguins rows shaped to the contract, and a fingerprint that names them."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, TARGET

# How a model's metadata names the bundled dataset as its source.
BUNDLED_SOURCE = "palmerpenguins (bundled)"


def load_penguins() -> pd.DataFrame:
    """The dataset the `palmerpenguins` package ships (no download), shaped by `prepare`."""
    import palmerpenguins

    return prepare(palmerpenguins.load_penguins())


def prepare(raw: pd.DataFrame) -> pd.DataFrame:
    """Keep the contract's columns with plain dtypes; drop rows with no label or no measurement at all.

    Missing categories become NaN in object columns (not pandas' string dtype), so the sklearn pipeline and the
    service see one representation of "unknown".
    """
    frame = raw.loc[:, [*FEATURES, TARGET]].copy()
    frame = frame.dropna(subset=[TARGET]).dropna(subset=list(NUMERIC_FEATURES), how="all")
    for column in (*CATEGORICAL_FEATURES, TARGET):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), np.nan)
    for column in NUMERIC_FEATURES:
        frame[column] = frame[column].astype("float64")
    return frame.reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of the rows' content in a canonical CSV form: same rows, same fingerprint."""
    canonical = frame.loc[:, [*FEATURES, TARGET]].to_csv(index=False, float_format="%.6g", lineterminator="\n")
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
