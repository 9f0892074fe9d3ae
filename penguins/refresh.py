"""One re-read of the store into the next snapshot: models cached by tag, a broken new version never replacing
the one that works, and a store that vanished or cannot be read leaving the loaded models serving."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from penguins.errors import reason
from penguins.loaded import LoadedModel, load
from penguins.scan import STORE_FAILURE, Failure, Skipped, scan_with_rejected, store_is_there
from penguins.signals import Signal
from penguins.snapshot import Snapshot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    added: list[str]
    updated: list[dict[str, str]]
    removed: list[str]
    failed: list[Failure]
    serving: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    signal: Signal | None = None  # set by reload


@dataclass(frozen=True)
class Refreshed:
    snapshot: Snapshot
    change: Change
    retired: dict[str, LoadedModel] | None  # the models it no longer serves; None: the store was not read
    retry: bool  # the store could not be read: the periodic check tries again


def refresh(current: Snapshot, store_dir: Path, compiled: bool, pulled: Sequence[Failure] = ()) -> Refreshed:
    """The snapshot the store makes now, from `current` (its models are reused when their tag is unchanged);
    `pulled`: what the last pull from the repository could not bring."""
    stored, failures, rejected, skipped = scan_with_rejected(store_dir)
    local_tags = {m.tag for m in stored} | {f.tag for f in failures if f.tag}
    failures += [f for f in pulled if f.tag not in local_tags]
    served = current.models
    unreadable = next((f for f in failures if f.name == STORE_FAILURE), None)
    if served and (unreadable is not None or not store_is_there(store_dir)):
        # The store vanished (an unmounted volume, a folder moved away) or cannot be read (permissions): keep
        # serving what is loaded until it is back rather than turn every request into a 503. Removing one
        # model's folder still removes that model.
        what = unreadable.reason if unreadable else f"the model store {store_dir} is not there"
        gone = Failure(STORE_FAILURE, f"{what}; serving the models loaded before")
        if gone not in current.failures:
            logger.error("%s", gone.reason)
        kept = Snapshot(served, (gone,), current.rejected, current.skipped)
        change = Change(added=[], updated=[], removed=[], failed=[gone], serving=[m.tag for m in served.values()])
        return Refreshed(kept, change, None, retry=True)
    models: dict[str, LoadedModel] = {}
    for entry in stored:
        cached = served.get(entry.name)
        if cached is not None and cached.tag == entry.tag:
            models[entry.name] = cached
            continue
        try:
            models[entry.name] = load(entry, compiled)
        except Exception as error:
            failures.append(Failure(entry.name, reason(error), entry.tag))
    # A broken new version (half-written, unreadable, failing to load) must not take down the one that works.
    for failure in failures:
        if failure.name in served and failure.name not in models:
            models[failure.name] = served[failure.name]
    snapshot = Snapshot(dict(sorted(models.items())), tuple(failures), tuple(rejected), tuple(skipped))
    retired = {n: m for n, m in served.items() if n not in models}
    return Refreshed(snapshot, _change(served, models, failures, skipped), retired, retry=unreadable is not None)


def _change(
    before: dict[str, LoadedModel], after: dict[str, LoadedModel], failures: list[Failure], skipped: list[Skipped]
) -> Change:
    return Change(
        added=[m.tag for n, m in after.items() if n not in before],
        updated=[
            {"name": n, "from": before[n].tag, "to": m.tag}
            for n, m in after.items()
            if n in before and before[n].tag != m.tag
        ],
        removed=[m.tag for n, m in before.items() if n not in after],
        failed=failures,
        serving=[m.tag for m in after.values()],
        skipped=skipped,
    )
