"""Pruning's rule without a process or a server: the plan for a store's versions, and for what a model repository
holds (against an in-memory stand-in for the S3 client's few calls that listing and deleting make)."""

from __future__ import annotations

import io

import pytest

from penguins.bucket import Manifest, Repository
from penguins.lifecycle import (
    NOT_SERVED,
    REJECTED,
    SERVED,
    SKIPPED,
    Version,
    delete_remote,
    plan_repository,
    plan_store,
)


class FakeS3:
    """list_objects_v2 (paginated), get_object and delete_object over a dict."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def get_paginator(self, operation):
        assert operation == "list_objects_v2"
        return self

    def paginate(self, Bucket, Prefix):  # boto3 spells its arguments so
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        yield {"Contents": [{"Key": k, "ETag": str(hash(self.objects[k]))} for k in keys]}

    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket, Key):
        self.objects.pop(Key, None)


def _publish(s3: FakeS3, name: str, version: str, created: str, status: str) -> None:
    key = f"fleet/models/{name}/{version}"
    manifest = Manifest(
        f"{name}:{version}", name, version, key + ".bentomodel", 1, "ab", {"status": status}, created, created, "h"
    )
    s3.objects[key + ".bentomodel"] = b"x"
    s3.objects[key + ".json"] = manifest.to_json()


def test_the_repositorys_served_version_is_never_pruned_and_a_deleted_one_is_gone():
    s3 = FakeS3()
    name = "penguins-knn"
    _publish(s3, name, "v4", "2026-01-04", "rejected")  # newest: rejected
    _publish(s3, name, "v3", "2026-01-03", "promoted")  # what a pull serves
    _publish(s3, name, "v2", "2026-01-02", "promoted")
    _publish(s3, name, "v1", "2026-01-01", "promoted")
    repository = Repository("s3://bucket/fleet", client=s3)
    plan = {p.tag: p for p in plan_repository(repository, keep=1)}
    assert not plan[f"{name}:v4"].delete and not plan[f"{name}:v3"].delete
    assert plan[f"{name}:v3"].status == SERVED and plan[f"{name}:v4"].status == REJECTED
    assert plan[f"{name}:v2"].delete and plan[f"{name}:v1"].delete
    for tag in (f"{name}:v2", f"{name}:v1"):
        delete_remote(repository, tag)
    assert sorted(s3.objects) == sorted(
        f"fleet/models/{name}/{v}{s}" for v in ("v3", "v4") for s in (".json", ".bentomodel")
    )
    assert {m.tag for m, _ in repository.manifests()[0]} == {f"{name}:v4", f"{name}:v3"}


def test_the_store_plan_keeps_the_newest_the_served_and_the_latest():
    def v(tag, status, latest=False):
        return Version(tag.split(":")[0], tag, status, "", latest=latest)

    versions = [
        v("penguins-svm:new", REJECTED, latest=True),
        v("penguins-svm:mid", NOT_SERVED),
        v("penguins-svm:served", SERVED),
        v("penguins-svm:old", NOT_SERVED),
        v("penguins-tree:", SKIPPED),
    ]
    assert {p.tag: p.delete for p in plan_store(versions, keep=0)} == {
        "penguins-svm:new": False,
        "penguins-svm:mid": True,
        "penguins-svm:served": False,
        "penguins-svm:old": True,
    }
    assert [p.tag for p in plan_store(versions, keep=2) if p.delete] == ["penguins-svm:old"]
    with pytest.raises(ValueError):
        plan_store(versions, keep=-1)
