"""The promotion gate: the decision, the store scan that skips rejected versions, the listing that shows them, and
the real training CLI deciding against the served version."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from penguins.contract import EXAMPLE_PENGUIN
from penguins.errors import UnknownModel
from penguins.gate import Decision, decide
from penguins.listing import listing
from penguins.names import REJECTED, STATUS_LABEL, model_name
from penguins.registry import Registry
from penguins.scan import scan
from tests.harness import run_train, serve

TOKEN = "gate-test-token"


def _latest(store: Path, algorithm: str) -> str:
    return (store / model_name(algorithm) / "latest").read_text().strip()


def add_version(
    store: Path,
    algorithm: str,
    version: str,
    *,
    status: str | None = None,
    test_accuracy=None,
    minutes: float = 1,
    make_latest: bool = True,
) -> str:
    """Copy the latest version of `algorithm` as a new version `minutes` after it, with a status label."""
    name_dir = store / model_name(algorithm)
    source = name_dir / _latest(store, algorithm)
    target = name_dir / version
    shutil.copytree(source, target)
    info = yaml.safe_load((target / "model.yaml").read_text())
    info["version"] = version
    if status:
        info["labels"][STATUS_LABEL] = status
    if test_accuracy is not None:
        info["metadata"]["test_accuracy"] = test_accuracy
    created = datetime.fromisoformat(info["creation_time"]) + timedelta(minutes=minutes)
    info["creation_time"] = created.isoformat()
    (target / "model.yaml").write_text(yaml.safe_dump(info))
    if make_latest:
        (name_dir / "latest").write_text(version)
    return f"{model_name(algorithm)}:{version}"


def _served(store: Path) -> dict[str, str]:
    found, failures = scan(store)
    assert failures == []
    return {m.name: m.tag for m in found}


def test_a_rejected_latest_leaves_the_previous_version_served(store, trained):
    before = _served(store)
    rejected = add_version(store, "knn", "zzrejected", status=REJECTED, test_accuracy=0.5)
    assert _served(store) == before
    registry = Registry(store)
    registry.reload()
    assert registry.snapshot.models[model_name("knn")].tag == trained["knn"][1]
    shown = listing(registry.snapshot)
    assert [r.tag for r in shown.rejected] == [rejected]
    assert shown.rejected[0].metrics["test_accuracy"] == 0.5
    assert rejected not in {m.tag for m in shown.models}
    # Asked for by its tag, the rejected version is a 404 that says the gate rejected it.
    with pytest.raises(UnknownModel, match="promotion gate rejected it") as asked:
        registry.snapshot.lookup(rejected)
    assert asked.value.status == 404 and model_name("knn") in asked.value.details["allowed"]
    # The store vanishing for a while keeps the loaded models served and the rejected version listed.
    store.rename(store.with_name("moved-away"))
    registry.reload()
    assert registry.snapshot.models[model_name("knn")].tag == trained["knn"][1]
    assert [r.tag for r in registry.snapshot.rejected] == [rejected]


def test_the_newest_version_not_rejected_is_served(store):
    promoted = add_version(store, "knn", "aapromoted", status="promoted", minutes=1)
    add_version(store, "knn", "bbrejected", status=REJECTED, minutes=2)
    add_version(store, "knn", "ccrejected", status=REJECTED, minutes=3)
    assert _served(store)[model_name("knn")] == promoted
    # A later promoted version is `latest` again and served; the rejected ones stay listed.
    newest = add_version(store, "knn", "ddpromoted", status="promoted", minutes=4)
    assert _served(store)[model_name("knn")] == newest
    registry = Registry(store)
    registry.reload()
    assert [r.tag.split(":")[1] for r in registry.snapshot.rejected] == ["ccrejected", "bbrejected"]


def test_half_written_and_newer_folders_are_tolerated_when_falling_back(store, trained):
    name_dir = store / model_name("svm")
    (name_dir / "halfwritten").mkdir()  # a save in progress: no model.yaml yet
    add_version(store, "svm", "rejected1", status=REJECTED, minutes=1)
    # Complete-looking but newer than `latest`: also a save in progress (its `latest` is not written yet).
    add_version(store, "svm", "inprogress", minutes=5, make_latest=False)
    assert _served(store)[model_name("svm")] == trained["svm"][1]


def test_a_name_whose_only_version_is_rejected_is_not_served(store):
    name_dir = store / model_name("knn")
    only = _latest(store, "knn")
    path = name_dir / only / "model.yaml"
    info = yaml.safe_load(path.read_text())
    info["labels"][STATUS_LABEL] = REJECTED
    path.write_text(yaml.safe_dump(info))
    assert model_name("knn") not in _served(store)
    registry = Registry(store)
    change = registry.reload()
    assert not change.failed and model_name("knn") not in registry.snapshot.models
    assert [r.name for r in registry.snapshot.rejected] == [model_name("knn")]
    with pytest.raises(UnknownModel, match="'knn' is not served: the promotion gate rejected it"):
        registry.snapshot.lookup("knn")


def test_decide_against_the_served_version(store):
    served_tag = f"{model_name('knn')}:{_latest(store, 'knn')}"  # test_accuracy 1.0 on the full data
    promote = decide(model_name("knn"), {"test_accuracy": 0.995}, 0.01, store)
    assert promote.promoted and promote.served_tag == served_tag and promote.served_score == 1.0
    reject = decide(model_name("knn"), {"test_accuracy": 0.97}, 0.01, store)
    assert not reject.promoted and reject.status == REJECTED and "worse" in reject.reason
    assert decide(model_name("knn"), {"test_accuracy": 0.97}, 0.05, store).promoted
    assert decide(model_name("knn"), {"test_accuracy": 0.99}, 0.01, store).promoted  # exactly at the tolerance
    first = decide(model_name("brand-new"), {"test_accuracy": 0.2}, 0.01, store)
    assert first.promoted and first.served_tag is None
    with pytest.raises(ValueError):
        decide(model_name("knn"), {"test_accuracy": 1.0}, -0.1, store)


def test_decision_metadata_has_no_none():
    decision = Decision(True, "test_accuracy", 1.0, 0.01, None, None, "first")
    assert None not in decision.as_metadata().values() and decision.as_metadata()["status"] == "promoted"


@pytest.mark.integration
def test_the_gate_decides_what_a_real_server_serves(tmp_path):
    """Real CLI runs into a fresh store served by a real `bentoml serve`: random-forest seed 42 scores 1.0 on its
    held-out part, seed 7 0.971. With the default tolerance (0.01) seed 7 is kept but rejected and the server keeps
    seed 42; with 0.05 it passes and is served. The listing shows the served and the rejected version."""
    home = tmp_path / "home"
    run_train(home, "--models", "random-forest")
    (first,) = scan(home / "models")[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(home, tmp_path / "serve.log", PENGUINS_ADMIN_TOKEN=TOKEN) as url:
        worse = run_train(home, "--models", "random-forest", "--seed", "7", check=False)
        assert worse.returncode == 3 and "rejected" in worse.stdout  # train.py's status for a rejection
        reloaded = httpx.post(f"{url}/reload", headers=auth)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["updated"] == [] and reloaded.json()["serving"] == [first.tag]

        listing = httpx.post(f"{url}/models").json()
        assert [m["tag"] for m in listing["models"]] == [first.tag]
        (rejected,) = listing["rejected"]
        assert rejected["tag"] != first.tag and rejected["name"] == first.name
        gate = rejected["gate"]
        assert gate["status"] == REJECTED and gate["served_tag"] == first.tag and gate["tolerance"] == 0.01
        assert gate["served_score"] - rejected["metrics"]["test_accuracy"] > 0.01
        # The rejected version is in the store but not served, neither by default nor when asked for by tag.
        assert (home / "models" / first.name / rejected["tag"].split(":")[1] / "model.yaml").exists()
        answer = httpx.post(f"{url}/classify_random_forest", json={"penguins": [EXAMPLE_PENGUIN]})
        assert answer.status_code == 200 and answer.json()[0]["model"] == first.tag
        asked = httpx.post(f"{url}/classify", json={"penguins": [EXAMPLE_PENGUIN], "model": rejected["tag"]})
        assert asked.status_code == 404

        # A looser tolerance lets the same score through: after reload it is served, the rejected one still listed.
        looser = run_train(home, "--models", "random-forest", "--seed", "7", "--tolerance", "0.05")
        assert "promoted" in looser.stdout
        reloaded = httpx.post(f"{url}/reload", headers=auth).json()
        (update,) = reloaded["updated"]
        assert update["from"] == first.tag and update["to"] not in (first.tag, rejected["tag"])
        listing = httpx.post(f"{url}/models").json()
        assert [m["tag"] for m in listing["models"]] == [update["to"]]
        assert [r["tag"] for r in listing["rejected"]] == [rejected["tag"]]
        answer = httpx.post(f"{url}/classify", json={"penguins": [EXAMPLE_PENGUIN]})
        assert answer.json()[0]["model"] == update["to"]
