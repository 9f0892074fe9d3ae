"""Palmer Penguins species classifiers, trained into the BentoML model store and served with BentoML.

For notebooks: `from penguins import train_and_save` (see penguins.training). Imported on first use, so that importing
the package stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train_and_save"]


def __getattr__(name: str) -> Any:
    if name == "train_and_save":
        from penguins.training import train_and_save

        return train_and_save
    raise AttributeError(f"module 'penguins' has no attribute {name!r}")
