"""The repository's local half, without a server: unpacking an archive refuses what could escape the store, and what
BentoML's own export makes unpacks to the same model (the S3 half is tests/test_s3.py)."""

from __future__ import annotations

import io
import tarfile

import pytest

from penguins.bucket import Manifest, parse
from penguins.install import unpack
from tests.harness import version_dir


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, body in members:
            archive.addfile(info, io.BytesIO(body) if body is not None else None)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer, mode="r")


def _file(name: str, body: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return info, body


def _link(name: str, to: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, to
    return info, None


@pytest.mark.parametrize(
    "member",
    [
        _file("../outside"),
        _file("/etc/absolute"),
        _link("evil", "/etc/passwd", tarfile.SYMTYPE),
        _link("hard", "/etc/passwd", tarfile.LNKTYPE),
    ],
    ids=["parent", "absolute", "symlink", "hardlink"],
)
def test_unpacking_refuses_what_could_escape(tmp_path, member):
    target = tmp_path / "unpacked"
    target.mkdir()
    with pytest.raises(ValueError):
        unpack(_archive(_file("model.yaml"), member), target)
    assert not (tmp_path / "outside").exists()


def test_bentomls_export_unpacks_to_the_same_model(tmp_path, store):
    from bentoml._internal.models.model import Model

    folder = version_dir(store, "knn")
    model = Model.from_path(folder)
    exported = model.export(str(tmp_path / "knn.bentomodel"))
    target = tmp_path / "unpacked"
    target.mkdir()
    with tarfile.open(exported, "r:*") as archive:
        unpack(archive, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert Model.from_path(target).tag == model.tag
    for path in folder.iterdir():
        assert (target / path.name).read_bytes() == path.read_bytes()


def test_urls_and_manifests():
    assert parse("s3://penguins/fleet/models") == ("penguins", "fleet/models")
    assert parse("s3://penguins") == ("penguins", "")
    with pytest.raises(ValueError):
        parse("http://penguins/x")
    manifest = Manifest("m:v", "m", "v", "p/models/m/v.bentomodel", 3, "ab", {"status": "promoted"}, "t", "t", "h")
    assert Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ValueError):
        Manifest.from_json(manifest.to_json().replace(b"bentomodel/1", b"other/9"))
