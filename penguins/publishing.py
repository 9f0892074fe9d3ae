"""The configured model repository (PENGUINS_MODEL_REPOSITORY), or nothing: what training, serving and the
commands call to publish a saved version, publish what the repository lacks, and pull what the store lacks. Each is
a no-op (None, or nothing) when no repository is configured.
"""

from __future__ import annotations

from pathlib import Path

from penguins.bucket import Manifest, Repository, RepositoryError
from penguins.install import PullResult
from penguins.names import default_store_dir
from penguins.scan import local_versions
from penguins.settings import get_settings

_configured: dict[str, Repository] = {}


def configured() -> Repository | None:
    """The repository PENGUINS_MODEL_REPOSITORY names (one per process), or None when it is unset."""
    url = get_settings().model_repository
    if url is None:
        return None
    if url not in _configured:
        _configured[url] = Repository(url)
    return _configured[url]


def publish(tag: str, store_dir: Path | None = None) -> Manifest | None:
    """Publish one saved version (`name:version`) of the local store to the configured repository; None when no
    repository is configured. Raises RepositoryError when it cannot be published: the version then exists only
    in the local store (`python -m penguins.cli repository publish --missing` catches up)."""
    repository = configured()
    if repository is None:
        return None
    name, _, version = tag.partition(":")
    path = (store_dir or default_store_dir()) / name / version
    try:
        return repository.publish(path)
    except RepositoryError as error:
        raise RepositoryError(
            f"{tag} is saved in the local store but NOT published: {error}. Once the repository answers, run "
            "`python -m penguins.cli repository publish --missing`"
        ) from None


def publish_missing(store_dir: Path | None = None) -> list[Manifest]:
    """Publish every version of this project's models in the local store that the repository lacks."""
    repository = configured()
    if repository is None:
        return []
    listed, _ = repository.listing()
    local = local_versions(store_dir or default_store_dir())
    return [repository.publish(path) for tag, path in local if tag not in listed]


def pull(store_dir: Path | None = None) -> PullResult | None:
    """Fetch into the local store what serving needs and it lacks (what every reload does first); None when no
    repository is configured."""
    repository = configured()
    if repository is None:
        return None
    return repository.pull(store_dir or default_store_dir())
