"""The store as the service sees it: a dirty store is tolerated, changes are reported, models cached by tag."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from penguins.contract import Penguin, Prediction
from penguins.errors import NoModelLoaded, UnknownModel
from penguins.install import PULL_LOCK, UNPACKING
from penguins.names import check_model_name, model_name, route_of
from penguins.registry import Registry
from penguins.scan import STORE_FAILURE, scan
from penguins.signals import RELOAD_SIGNAL
from tests.harness import ROOT, version_dir


def test_scan_finds_every_penguin_model(store, trained):
    found, failures = scan(store)
    assert {m.tag for m in found} == {tag for _, tag in trained.values()}
    assert failures == []


def test_scan_ignores_clutter_and_other_projects_models(store):
    (store / ".ipynb_checkpoints").mkdir()
    (store / "lost+found").mkdir()
    (store / "README.txt").write_text("not a model")
    other = store / "someone-elses-model"
    shutil.copytree(version_dir(store, "knn").parent, other)
    yaml = next(other.glob("*/model.yaml"))
    yaml.write_text(yaml.read_text().replace("project: palmer-penguins", "project: other"))
    found, failures = scan(store)
    assert len(found) == 5 and failures == []


def test_broken_models_are_reported_by_name_and_the_others_serve(store):
    # Half-written: `latest` names a version whose folder has no model.yaml yet.
    half = store / model_name("knn")
    (half / "latest").write_text("halfwritten")
    (half / "halfwritten").mkdir()
    # Corrupt pickle in a complete-looking model.
    (version_dir(store, "svm") / "saved_model.pkl").write_bytes(b"not a pickle")
    registry = Registry(store)
    change = registry.reload()
    failed = {f.name: f for f in change.failed}
    assert set(failed) == {model_name("knn"), model_name("svm")}
    assert failed[model_name("knn")].tag == f"{model_name('knn')}:halfwritten"
    assert "model.yaml" in failed[model_name("knn")].reason
    assert "cannot unpickle" in failed[model_name("svm")].reason
    assert set(registry.snapshot.models) == {
        model_name(a) for a in ("logistic-regression", "random-forest", "gradient-boosting")
    }
    assert registry.snapshot.failures  # also shown by the listing


def test_a_broken_new_version_keeps_the_old_one_serving(store):
    registry = Registry(store)
    registry.reload()
    old = registry.snapshot.models[model_name("svm")]
    name_dir = store / model_name("svm")
    broken = name_dir / "zzzbroken"
    shutil.copytree(version_dir(store, "svm"), broken)
    (broken / "model.yaml").write_text((broken / "model.yaml").read_text().replace(old.tag.split(":")[1], "zzzbroken"))
    (broken / "saved_model.pkl").write_bytes(b"garbage")
    (name_dir / "latest").write_text("zzzbroken")
    change = registry.reload()
    assert [f.tag for f in change.failed] == [f"{model_name('svm')}:zzzbroken"]
    assert registry.snapshot.models[model_name("svm")] is old


def test_reload_reports_changes_and_caches_by_tag(store):
    registry = Registry(store)
    first = registry.reload()
    assert len(first.added) == 5 and not first.updated and not first.removed
    before = dict(registry.snapshot.models)
    again = registry.reload()
    assert not (again.added or again.updated or again.removed)
    assert all(registry.snapshot.models[n] is m for n, m in before.items())  # not read from disk again

    shutil.rmtree(store / model_name("knn"))
    change = registry.reload()
    assert change.removed == [before[model_name("knn")].tag]
    assert model_name("knn") not in registry.snapshot.models


def test_other_workers_catch_up_through_the_marker(store, trained):
    worker_a, worker_b = Registry(store), Registry(store)
    worker_a.sync(), worker_b.sync()
    assert not worker_b.is_stale()
    shutil.rmtree(store / model_name("knn"))
    worker_a.reload()
    assert worker_b.is_stale()
    assert model_name("knn") not in worker_b.sync().models
    assert not worker_b.is_stale()


def test_store_that_disappears_and_comes_back(store, tmp_path, example):
    registry = Registry(store)
    registry.reload()
    moved = tmp_path / "elsewhere"
    store.rename(moved)
    change = registry.reload()
    # Still serving what was loaded, and saying why nothing was re-read.
    assert len(registry.snapshot.models) == 5 and change.removed == []
    (failure,) = change.failed
    assert failure.name == STORE_FAILURE and "not there" in failure.reason
    assert registry.snapshot.failures == (failure,)
    assert registry.snapshot.best().predict([Penguin(**example)])[0]["species"] == "Gentoo"
    moved.rename(store)
    change = registry.reload()
    assert change.failed == [] and registry.snapshot.failures == () and len(change.serving) == 5
    # Deleting one model's folder (not the store) still removes that model.
    shutil.rmtree(store / model_name("knn"))
    assert registry.reload().removed == [registry.retired[model_name("knn")].tag]


def test_loaded_models_predict_with_probabilities_that_sum_to_one(store, example):
    registry = Registry(store)
    registry.reload()
    for model in registry.snapshot.models.values():
        (row,) = model.predict([Penguin(**example)])
        prediction = Prediction.model_validate(row)  # the rows keep the output contract
        assert prediction.species == "Gentoo" and prediction.model == model.tag
        assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5
        assert model.predictor.kind == "onnx"


def test_sklearn_fallback_when_compiled_forms_are_off(store, example):
    registry = Registry(store, compiled=False)
    registry.reload()
    model = registry.snapshot.models[model_name("random-forest")]
    assert model.predictor.kind == "sklearn"
    assert model.predict([Penguin(**example)])[0]["species"] == "Gentoo"


def test_a_half_written_new_version_keeps_the_old_one_serving(store):
    registry = Registry(store)
    registry.reload()
    old = registry.snapshot.models[model_name("knn")]
    name_dir = store / model_name("knn")
    (name_dir / "halfwritten").mkdir()  # `latest` already points at it, model.yaml not written yet
    (name_dir / "latest").write_text("halfwritten")
    change = registry.reload()
    assert [f.tag for f in change.failed] == [f"{model_name('knn')}:halfwritten"]
    assert change.removed == [] and registry.snapshot.models[model_name("knn")] is old


def _save_past_the_gate(store) -> None:
    """knn's model copied as `penguins-decision-tree` without this project's labels, as a plain BentoML save."""
    plain = store / model_name("decision-tree")
    shutil.copytree(version_dir(store, "knn").parent, plain)
    for yaml in plain.glob("*/model.yaml"):
        text = yaml.read_text().replace(model_name("knn"), model_name("decision-tree"))
        yaml.write_text(text.replace("project: palmer-penguins", "project: elsewhere"))


def test_a_penguin_named_model_saved_without_the_gate_is_skipped_with_the_call_that_would_serve_it(store):
    _save_past_the_gate(store)
    registry = Registry(store)
    change = registry.reload()
    (skipped,) = change.skipped
    assert skipped.name == model_name("decision-tree") and "labels" in skipped.reason
    assert "train_and_save" in skipped.fix and "'decision-tree'" in skipped.fix
    assert registry.snapshot.skipped == (skipped,)
    assert model_name("decision-tree") not in registry.snapshot.models
    # Asked for, it is a 404 that says why and how to serve it, and names what is served.
    with pytest.raises(UnknownModel) as asked:
        registry.snapshot.lookup("decision-tree")
    assert asked.value.message == f"model 'decision-tree' is not served: {skipped.reason}"
    assert asked.value.details["fix"] == skipped.fix and model_name("knn") in asked.value.details["allowed"]


def test_with_nothing_served_the_503_says_what_the_store_holds_and_why(store):
    _save_past_the_gate(store)
    for algorithm in ("logistic-regression", "random-forest", "gradient-boosting", "knn"):
        shutil.rmtree(store / model_name(algorithm))
    (store / model_name("svm") / "latest").write_text("nosuchversion")
    registry = Registry(store)
    registry.reload()
    with pytest.raises(NoModelLoaded) as nothing:
        registry.snapshot.lookup()
    assert nothing.value.status == 503 and "python train.py" in nothing.value.message
    held = nothing.value.details["not_served"]
    assert set(held) == {model_name("decision-tree"), model_name("svm")}, held
    assert "promotion gate" in held[model_name("decision-tree")] and "failed to load" in held[model_name("svm")]
    assert model_name("decision-tree") in nothing.value.message


def test_a_latest_file_pointing_into_another_model_is_refused(store):
    knn_version = version_dir(store, "knn").name
    (store / model_name("svm") / "latest").write_text(f"../{model_name('knn')}/{knn_version}")
    registry = Registry(store)
    change = registry.reload()
    assert model_name("svm") not in registry.snapshot.models
    (failure,) = change.failed
    assert failure.name == model_name("svm") and "not a version" in failure.reason


def test_a_version_copied_from_another_model_is_refused(store):
    # Same effect as a crafted `latest`: svm's latest version is knn's model.
    svm_dir = store / model_name("svm")
    shutil.copytree(version_dir(store, "knn"), svm_dir / "copied")
    (svm_dir / "latest").write_text("copied")
    registry = Registry(store)
    registry.reload()
    assert model_name("svm") not in registry.snapshot.models
    assert {f.name for f in registry.snapshot.failures} == {model_name("svm")}
    with pytest.raises(UnknownModel, match="'svm' is not served: it failed to load \\(.*holds a copy of"):
        registry.snapshot.lookup("svm")


def test_a_version_not_served_is_a_404_naming_the_served_one(store):
    registry = Registry(store)
    registry.reload()
    served = registry.snapshot.models[model_name("knn")].tag
    assert registry.snapshot.lookup(served).tag == served
    with pytest.raises(UnknownModel, match=f"{model_name('knn')}:older is not the served version \\({served}\\)"):
        registry.snapshot.lookup("knn:older")
    with pytest.raises(UnknownModel) as unknown:  # a name the store does not hold: no reason to give
        registry.snapshot.lookup("no-such-model")
    assert unknown.value.message == "model 'no-such-model' is not served" and "reason" not in unknown.value.details


def test_routes_come_from_model_names_alone(store):
    # An `algorithm` label that disagrees with the name changes nothing about the route.
    yaml = version_dir(store, "knn") / "model.yaml"
    yaml.write_text(yaml.read_text().replace("algorithm: knn", "algorithm: <b>svm</b>"))
    registry = Registry(store)
    registry.reload()
    routes = registry.snapshot.routes()
    assert routes["/classify_knn"] == model_name("knn")
    assert len(routes) == 5 and all(route == route_of(name) for route, name in routes.items())


def test_a_version_rewritten_in_place_is_read_again(store):
    # Scans remember each parsed model.yaml (BentoML's YAML parse is slow), but only while the file is unchanged.
    yaml = version_dir(store, "knn") / "model.yaml"
    assert _knn_labels(store)["status"] == "promoted"
    yaml.write_text(yaml.read_text().replace("status: promoted", "status: rejected", 1))
    assert _knn_labels(store)["status"] == "rejected"
    found, _ = scan(store)
    assert model_name("knn") not in {m.name for m in found}  # its only version is rejected: not served


def _knn_labels(store):
    from penguins.scan import _read_model

    return dict(_read_model(version_dir(store, "knn")).info.labels)


@pytest.mark.parametrize("name", ["extra-trees", "mlp", "a1", "x" * 40])
def test_valid_model_names(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Extra", "extra_trees", "extra--trees", "-extra", "extra-", "1mlp", "x" * 41, "a b", "../x"]
)
def test_invalid_model_names_say_why(name):
    with pytest.raises(ValueError, match="invalid model name"):
        check_model_name(name)


@pytest.mark.cli  # runs `bentoml models list`
def test_the_reload_signal_lives_in_the_store_itself(store, tmp_path):
    """Two servers with their own BENTOML_HOME and the same models folder (here through a symlink, as a shared
    volume would be): a reload on one is seen by the other, and BentoML's own listing still reads the store."""
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    (other_home / "models").symlink_to(store)
    a, b = Registry(store), Registry(other_home / "models")
    a.sync(), b.sync()
    shutil.rmtree(store / model_name("knn"))
    change = a.reload()
    assert change.signal.written == ("store",) and change.signal.reaches == "every replica sharing this store"
    assert (store / RELOAD_SIGNAL).is_file()
    assert b.is_stale() and model_name("knn") not in b.sync().models
    # What a pull leaves in the store's root while it runs: its lock, a download, a folder being unpacked.
    (store / PULL_LOCK).touch()
    (store / ".penguins-pull-0123.part").write_bytes(b"partial")
    unpacking = store / f"{UNPACKING}0123"
    unpacking.mkdir()
    (unpacking / "model.yaml").write_text("name: half")
    assert len(scan(store)[0]) == 4 and scan(store)[1] == []
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
        env={**os.environ, "BENTOML_HOME": str(other_home)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(json.loads(listed.stdout)) == 4  # none of them is an entry to BentoML


def test_a_store_that_cannot_take_the_signal_reaches_this_servers_workers_and_says_so(store):
    (store / RELOAD_SIGNAL).unlink(missing_ok=True)  # the copied store may hold a signal an earlier reload wrote
    (store / RELOAD_SIGNAL).mkdir()  # the signal cannot be written there, as on a read-only mount
    worker_1, worker_2 = Registry(store), Registry(store)  # two workers of one server (one parent process)
    try:
        worker_1.sync(), worker_2.sync()
        shutil.rmtree(store / model_name("knn"))
        signal = worker_1.reload().signal
        assert signal.written == ("server",) and signal.failed[0].where == "store"
        assert signal.reaches.startswith("this server's workers only")
        assert RELOAD_SIGNAL in worker_1.status().signal_error
        assert model_name("knn") not in worker_2.sync().models
    finally:
        worker_1.signals.server_file.unlink(missing_ok=True)


def test_listeners_hear_of_every_change_and_only_of_changes(store):
    registry = Registry(store)
    heard = []
    registry.listeners.append(lambda snapshot: heard.append(sorted(snapshot.models)))
    registry.reload()
    registry.reload()  # nothing changed: no call
    assert len(heard) == 1 and len(heard[0]) == 5
    shutil.rmtree(store / model_name("knn"))
    registry.reload()
    assert len(heard) == 2 and model_name("knn") not in heard[1]


def test_the_periodic_check_follows_a_reload_without_any_traffic(store):
    a, b = Registry(store), Registry(store)
    a.sync(), b.sync()
    b.start(interval=0.2)
    try:
        shutil.rmtree(store / model_name("knn"))
        a.reload()
        deadline = time.monotonic() + 60
        while model_name("knn") in b.snapshot.models and time.monotonic() < deadline:
            time.sleep(0.05)  # reads only what b holds: no sync() call, nothing a request would do
        assert model_name("knn") not in b.snapshot.models
        assert b.status().last_check is not None and b.status().sync_interval_seconds == 0.2
    finally:
        b.stop()
    assert b._thread is None


UNREADABLE = """
import json, os, sys
from penguins.registry import Registry
store = sys.argv[1]
registry = Registry(store)
first = registry.reload()
os.chmod(store, 0)
denied = registry.reload()
served = sorted(registry.snapshot.models)
os.chmod(store, 0o755)
back = registry.reload()
print(json.dumps({"first": first.serving, "denied": [f.__dict__ for f in denied.failed], "served": served,
                  "denied_serving": denied.serving, "back": back.serving, "back_failed": len(back.failed)}))
"""


@pytest.mark.cli  # runs the scan under setpriv, in a process of its own
def test_an_unreadable_store_is_a_failure_that_keeps_the_loaded_models_serving(store):
    # As root, permissions are not checked: run without the capabilities that bypass them (CAP_DAC_*).
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop root's permission bypass")
    result = subprocess.run(
        [*prefix, sys.executable, "-c", UNREADABLE, str(store)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert len(seen["first"]) == 5
    (failure,) = seen["denied"]
    assert failure["name"] == STORE_FAILURE and "PermissionError" in failure["reason"]
    assert "serving the models loaded before" in failure["reason"]
    assert len(seen["served"]) == 5 and sorted(seen["denied_serving"]) == sorted(seen["first"])
    assert sorted(seen["back"]) == sorted(seen["first"]) and seen["back_failed"] == 0
