"""A classifier of one's own, trained the one way every model is: the Python call (`train_and_save`) and the CLI
(`train.py --estimator`), what they refuse (and that nothing is saved then), what they save (labels, metrics,
provenance, explanation data, ONNX or the checked fallback, the gate's label) and that the API serves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.svm import LinearSVC

import train as train_cli
from penguins import names
from penguins.contract import CATEGORICAL_FEATURES, EXAMPLE_PENGUIN, FEATURES, NUMERIC_FEATURES, SPECIES, Penguin
from penguins.explain import CUSTOM_OBJECT, Explainer
from penguins.loaded import load
from penguins.names import PROJECT, STATUS_LABEL, check_model_name
from penguins.registry import Registry
from penguins.scan import scan
from penguins.training import (
    ALGORITHMS,
    Estimator,
    EstimatorError,
    Saved,
    describe,
    train,
    train_and_save,
)
from tests.harness import ROOT, run_train, serve


class OwnEstimator(RandomForestClassifier):
    """A classifier class as a notebook defines it: its module is __main__ (set below), which the API cannot import."""


OwnEstimator.__module__ = "__main__"


def session_store() -> set[str]:
    """Every model version in the tests' own BentoML store (where an in-process save would land)."""
    models = Path(os.environ["BENTOML_HOME"]) / "models"
    return {str(p.relative_to(models)) for p in models.glob("*/*")} if models.is_dir() else set()


# --- refused, in Python: EstimatorError naming the problem, nothing saved -------------------------------------------

OWN_PIPELINE_WITHOUT_PREPROCESSING = Pipeline([("model", RandomForestClassifier())])
OWN_PIPELINE_OVER_OTHER_COLUMNS = Pipeline(
    [
        ("columns", ColumnTransformer([("year", SimpleImputer(), ["year"])])),
        ("model", RandomForestClassifier()),
    ]
)

REFUSED = {
    "not an estimator": ("a random forest", "extra-trees", "is not a scikit-learn estimator"),
    "not a classifier": (LinearRegression(), "linear", "sklearn.linear_model.LinearRegression is not a classifier"),
    "no predict_proba": (LinearSVC(), "linear-svc", "has no predict_proba.*CalibratedClassifierCV"),
    "invalid parameter value": (
        ExtraTreesClassifier(n_estimators="many"),
        "extra-trees",
        "The 'n_estimators' parameter of ExtraTreesClassifier must be an int",
    ),
    "fitting fails": (MultinomialNB(), "naive-bayes", "fitting sklearn.naive_bayes.MultinomialNB .* Negative values"),
    "pipeline without the contract's preprocessing": (
        OWN_PIPELINE_WITHOUT_PREPROCESSING,
        "own",
        r"fitting the pipeline on the contract's columns \(island, .*\) failed: ValueError: could not convert",
    ),
    "pipeline over other columns": (
        OWN_PIPELINE_OVER_OTHER_COLUMNS,
        "own",
        r"fitting the pipeline on the contract's columns .* failed: .*year",
    ),
    "pipeline ending in a regressor": (make_pipeline(LinearRegression()), "own", "is not a classifier"),
    "class defined in __main__": (OwnEstimator(), "own", "OwnEstimator is defined in __main__"),
    "name with capitals": (ExtraTreesClassifier(), "Extra-Trees", "invalid model name 'Extra-Trees'"),
    "name with an underscore": (ExtraTreesClassifier(), "extra_trees", "invalid model name"),
    "name starting with a digit": (ExtraTreesClassifier(), "3-trees", "invalid model name"),
    "name with a double hyphen": (ExtraTreesClassifier(), "extra--trees", "invalid model name"),
    "name too long": (ExtraTreesClassifier(), "e" * 41, "at most 40 characters"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_train_and_save_refuses_what_cannot_be_served_and_saves_nothing(small_frame, case):
    classifier, name, message = REFUSED[case]
    before = session_store()
    with pytest.raises(EstimatorError, match=message) as refused:
        train_and_save(classifier, name, frame=small_frame)
    assert "\n" not in str(refused.value)
    assert session_store() == before


@pytest.mark.parametrize(
    ("estimator", "message"),
    [
        (Estimator("ExtraTreesClassifier"), "is not a dotted import path"),
        (Estimator("nosuchpackage.Model"), "cannot import nosuchpackage.Model: ModuleNotFoundError"),
        (Estimator("sklearn.ensemble.ExtraTreeClassifier"), "did you mean 'ExtraTreesClassifier'"),
        (Estimator("math.pi"), "math.pi is not a scikit-learn estimator class"),
        (Estimator("sklearn.ensemble"), "is not a scikit-learn estimator class"),
        (
            Estimator("sklearn.ensemble.ExtraTreesClassifier", {"n_estimator": 300}),
            "has no parameter 'n_estimator' \\(did you mean 'n_estimators'\\?\\); its parameters: n_estimators, ",
        ),
        (Estimator("sklearn.ensemble.VotingClassifier"), "VotingClassifier\\(\\) failed: TypeError: .*'estimators'"),
        (
            Estimator("sklearn.calibration.CalibratedClassifierCV", {"estimator": {"estimator": "sklearn.svm.SVCC"}}),
            "sklearn.svm has no 'SVCC' \\(did you mean 'SVC'\\?\\)",
        ),
    ],
)
def test_an_estimator_by_import_path_is_checked_before_it_is_built(estimator, message):
    with pytest.raises(EstimatorError, match=message):
        estimator(0)


def test_a_classifier_without_predict_proba_serves_once_calibrated(small_frame):
    trained = train("linear-svc", small_frame, 0, compile=False, classifier=CalibratedClassifierCV(LinearSVC()))
    assert trained.pipeline.predict_proba(small_frame[list(FEATURES)]).shape == (len(small_frame), len(SPECIES))
    spelled = Estimator(
        "sklearn.calibration.CalibratedClassifierCV", {"estimator": {"estimator": "sklearn.svm.LinearSVC"}}
    )
    assert spelled(0).get_params()["estimator"].__class__ is LinearSVC


# --- the one mechanism ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_built_in_is_an_estimator_whose_description_builds_it_again(algorithm):
    built = ALGORITHMS[algorithm](7)
    described = describe(built)
    assert described["estimator"] == ALGORITHMS[algorithm].path
    again = Estimator(described["estimator"], json.loads(json.dumps(described["params"])))(7)
    assert repr(again) == repr(built)


def test_every_random_state_left_unset_gets_the_seed():
    assert ALGORITHMS["svm"](3).get_params()["estimator__random_state"] == 3
    assert Estimator("sklearn.ensemble.ExtraTreesClassifier", {"random_state": 5})(3).random_state == 5
    assert "random_state" not in ALGORITHMS["knn"](3).get_params()


def test_own_classifiers_are_trained_like_the_built_ins(small_frame):
    """Same split, CV, metrics, provenance; explanation data for any classifier: the model's own importances when it
    has them, permutation importance otherwise."""
    forest = train("extra-trees", small_frame, 1, compile=False, classifier=ExtraTreesClassifier(n_estimators=50))
    mlp = train("mlp", small_frame, 1, compile=False, classifier=MLPClassifier((16,), max_iter=2000))
    builtin = train("random-forest", small_frame, 1, compile=False)
    assert forest.provenance["train_rows"] == builtin.provenance["train_rows"]
    for trained, method in ((forest, "impurity"), (mlp, "permutation")):
        assert set(trained.metrics) == set(builtin.metrics)
        assert set(trained.provenance) == set(builtin.provenance)
        assert trained.provenance["preprocessing"] == "contract"
        assert trained.explanation["importance"]["method"] == method
        explainer = Explainer.from_saved(trained.explanation, trained.pipeline)
        assert len(explainer.points) == trained.provenance["train_rows"]
    assert forest.provenance["estimator"] == "sklearn.ensemble.ExtraTreesClassifier"
    assert json.loads(forest.provenance["estimator_params"]) == {"n_estimators": 50, "random_state": 1}
    assert json.loads(mlp.provenance["estimator_params"]) == {
        "hidden_layer_sizes": [16],
        "max_iter": 2000,
        "random_state": 1,
    }


def test_a_complete_pipeline_of_ones_own_is_trained_as_given(small_frame):
    """Its own step names and preprocessing; explained through its own steps before the classifier."""
    own = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numbers", SimpleImputer(strategy="median"), list(NUMERIC_FEATURES)),
                        (
                            "words",
                            make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()),
                            list(CATEGORICAL_FEATURES),
                        ),
                    ]
                ),
            ),
            ("trees", ExtraTreesClassifier(n_estimators=30)),
        ]
    )
    trained = train("own-trees", small_frame, 2, classifier=own)
    assert trained.provenance["preprocessing"] == "own"
    assert [name for name, _ in trained.pipeline.steps] == ["columns", "trees"]
    assert own.steps[-1][1].__dict__.get("estimators_") is None, "the caller's pipeline is left unfitted"
    assert trained.explanation["importance"]["method"] == "impurity"
    assert trained.onnx is not None, trained.compiled
    explainer = Explainer.from_saved(trained.explanation, trained.pipeline)
    assert explainer.explain(Penguin(**EXAMPLE_PENGUIN), _prediction(), 3).neighbours[0].index >= 0


def _prediction():
    from penguins.contract import Prediction

    return Prediction(species="Gentoo", probabilities=dict.fromkeys(SPECIES, 1 / 3), model="m:1")


def test_param_values_are_json_when_they_parse_else_strings():
    parser, args = train_cli.parse_args(
        [
            "--estimator",
            "sklearn.neural_network.MLPClassifier",
            "--name",
            "mlp",
            "--param",
            "hidden_layer_sizes=[32,16]",
            "--param",
            "max_iter=2000",
            "--param",
            "activation=tanh",
            "--param",
            "early_stopping=true",
            "--param",
            "batch_size=null",
        ]
    )
    ((name, estimator),) = train_cli.estimators(parser, args)
    assert name == "mlp"
    assert estimator == Estimator(
        "sklearn.neural_network.MLPClassifier",
        {
            "hidden_layer_sizes": [32, 16],
            "max_iter": 2000,
            "activation": "tanh",
            "early_stopping": True,
            "batch_size": None,
        },
    )
    parser, args = train_cli.parse_args(["--models", "knn", "--estimator", "a.B", "--name", "b"])
    assert [n for n, _ in train_cli.estimators(parser, args)] == ["knn", "b"]
    parser, args = train_cli.parse_args([])
    assert [n for n, _ in train_cli.estimators(parser, args)] == list(ALGORITHMS)


# --- refused, by the CLI: exit status 2, one line on stderr, no traceback, nothing saved -----------------------------

CLI_REFUSED = {
    "not importable": (
        ["--estimator", "sklearn.ensemble.ExtraTreeClassifier", "--name", "x"],
        "did you mean 'ExtraTreesClassifier'",
    ),
    "no such module": (["--estimator", "nosuchpackage.Model", "--name", "x"], "No module named 'nosuchpackage'"),
    "not a class": (["--estimator", "math.pi", "--name", "x"], "is not a scikit-learn estimator class"),
    "not a classifier": (["--estimator", "sklearn.linear_model.LinearRegression", "--name", "x"], "not a classifier"),
    "no predict_proba": (
        ["--estimator", "sklearn.svm.LinearSVC", "--name", "x"],
        "wrap it in sklearn.calibration.CalibratedClassifierCV",
    ),
    "unknown parameter": (
        ["--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "x", "--param", "n_estimator=3"],
        "no parameter 'n_estimator' (did you mean 'n_estimators'?); its parameters: n_estimators,",
    ),
    "invalid parameter value": (
        ["--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "x", "--param", "n_estimators=many"],
        "The 'n_estimators' parameter of ExtraTreesClassifier must be an int",
    ),
    "constructor fails": (["--estimator", "sklearn.ensemble.VotingClassifier", "--name", "x"], "'estimators'"),
    "fitting fails": (["--estimator", "sklearn.naive_bayes.MultinomialNB", "--name", "x"], "Negative values"),
    "fitting fails after a built-in trained": (
        ["--models", "knn", "--estimator", "sklearn.naive_bayes.MultinomialNB", "--name", "x"],
        "Negative values",
    ),
    "own name where a built-in goes": (
        ["--models", "knn", "mlp"],
        "'mlp' is not a built-in (choose from logistic-regression, random-forest, gradient-boosting, svm, knn); "
        "to train a classifier of your own: --estimator <import.path.Class> --name mlp",
    ),
    "invalid name": (["--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "Extra_Trees"], "invalid"),
    "no name": (["--estimator", "sklearn.ensemble.ExtraTreesClassifier"], "--estimator needs --name"),
    "param without estimator": (["--param", "n_estimators=3"], "--name and --param go with --estimator"),
    "param without a value": (
        ["--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "x", "--param", "n_estimators"],
        "--param takes KEY=VALUE",
    ),
}


def _one_error_line(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error: ") and message in lines[-1], stderr
    assert "Traceback" not in stderr
    assert all(line.startswith("usage:") or line.startswith(" ") for line in lines[:-1]), stderr


@pytest.mark.parametrize("case", CLI_REFUSED)
def test_the_cli_refuses_with_exit_status_2_and_one_line(case, capsys):
    """train.py's main, in this process (the tests' store: nothing may land in it)."""
    argv, message = CLI_REFUSED[case]
    before = session_store()
    with pytest.raises(SystemExit) as exited:
        train_cli.main(argv)
    assert exited.value.code == 2
    _one_error_line(capsys.readouterr().err, message)
    assert session_store() == before


@pytest.mark.cli
@pytest.mark.parametrize("case", ["not importable", "fitting fails after a built-in trained"])
def test_the_real_cli_process_refuses_the_same_way(tmp_path, case):
    argv, message = CLI_REFUSED[case]
    done = run_train(tmp_path, *argv, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    _one_error_line(done.stderr, message)
    assert not list((tmp_path / "models").glob("*/*"))


# --- saved by the real CLI: ExtraTrees and an MLP ------------------------------------------------------------------

OWN = {
    "extra-trees": (["--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "extra-trees"], {}),
    "mlp": (
        [
            "--estimator",
            "sklearn.neural_network.MLPClassifier",
            "--name",
            "mlp",
            "--param",
            "hidden_layer_sizes=[32,16]",
            "--param",
            "max_iter=2000",
        ],
        {"hidden_layer_sizes": [32, 16], "max_iter": 2000},
    ),
}


@pytest.fixture(scope="module")
def own_home(tmp_path_factory) -> Path:
    """A BentoML home holding extra-trees and mlp, each saved by its own real train.py run."""
    home = tmp_path_factory.mktemp("own-home")
    for argv, _ in OWN.values():
        run_train(home, *argv)
    return home


@pytest.mark.cli
@pytest.mark.parametrize("name", OWN)
def test_the_cli_saves_an_own_classifier_like_a_built_in(own_home, name):
    from bentoml._internal.models.model import Model

    _, params = OWN[name]
    (stored,) = [m for m in scan(own_home / "models")[0] if m.algorithm == name]
    assert stored.name == f"penguins-{name}"
    model = Model.from_path(stored.path)
    assert model.info.labels == {"project": PROJECT, "algorithm": name, STATUS_LABEL: "promoted"}
    meta = model.info.metadata
    assert meta["test_accuracy"] >= 0.95 and meta["cv_accuracy_mean"] >= 0.95 and meta["cv_folds"] == 5
    assert np.array(meta["confusion_matrix"]).sum() == meta["test_rows"]
    assert meta["estimator"] == OWN[name][0][1]
    assert json.loads(meta["estimator_params"]) == {**params, "random_state": 42}
    assert meta["preprocessing"] == "contract" and meta["seed"] == 42
    assert meta["data_source"] == "palmerpenguins (bundled)" and meta["classes"] == list(SPECIES)
    assert meta["gate"]["status"] == "promoted" and meta["gate"]["reason"].startswith("no version")
    assert meta["compiled"]["format"] in ("onnx", "none")
    if meta["compiled"]["format"] == "onnx":
        assert "onnx" in model.custom_objects and meta["compiled"]["label_mismatches"] == 0
    assert CUSTOM_OBJECT in model.custom_objects
    loaded = load(stored)  # as the service loads it
    assert loaded.explainer is not None
    assert loaded.explainer.importance.method == ("impurity" if name == "extra-trees" else "permutation")
    assert loaded.predict([Penguin(**EXAMPLE_PENGUIN)])[0]["species"] == "Gentoo"


@pytest.mark.integration
def test_a_real_server_serves_the_own_classifiers_saved_by_the_cli(own_home, tmp_path):
    """Served from start-up: their typed routes, the client's methods, explain."""
    import bentoml

    with serve(own_home, tmp_path / "serve.log") as url, bentoml.SyncHTTPClient(url) as client:
        listing = {m["algorithm"]: m for m in client.models()["models"]}
        assert set(listing) == set(OWN)
        for name in OWN:
            (answer,) = getattr(client, names.endpoint_name(name))(penguins=[EXAMPLE_PENGUIN])
            assert answer["species"] == "Gentoo" and answer["model"] == listing[name]["tag"]
            explained = client.explain(penguin=EXAMPLE_PENGUIN, model=name, k=3)
            assert explained["prediction"]["model"] == listing[name]["tag"] and len(explained["neighbours"]) == 3


@pytest.mark.cli
def test_a_model_needing_a_module_the_api_lacks_is_reported_with_what_to_install(tmp_path):
    """Trained where a module was importable (a package installed in JupyterLab only, say), served where it is not:
    reported under failures, saying what to install, while the other models serve."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "my_forest.py").write_text(
        "from sklearn.ensemble import RandomForestClassifier\n\n\nclass MyForest(RandomForestClassifier):\n    pass\n"
    )
    home = tmp_path / "home"
    run_train(home, "--models", "knn")
    run_train(home, "--estimator", "my_forest.MyForest", "--name", "my-forest", env={"PYTHONPATH": str(own)})
    registry = Registry(home / "models")
    change = registry.reload()
    assert set(registry.snapshot.models) == {names.model_name("knn")}
    (failure,) = change.failed
    assert failure.name == names.model_name("my-forest")
    assert "No module named 'my_forest'" in failure.reason
    assert "install what provides 'my_forest' where the API runs" in failure.reason


# --- the gate applies to the notebook's call -------------------------------------------------------------------------

GATED = textwrap.dedent(
    """
    import json
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import ExtraTreesClassifier
    from penguins import train_and_save

    good = train_and_save(ExtraTreesClassifier(), "extra-trees")
    worse = train_and_save(DummyClassifier(), "extra-trees")  # always the most frequent species
    forced = train_and_save(DummyClassifier(), "dummy", gate=False)
    print(json.dumps({"repr": repr(worse), **{k: [v.tag, v.decision.as_dict(), v.trained.compiled]
                      for k, v in (("good", good), ("worse", worse), ("forced", forced))}}))
    """
)


@pytest.mark.cli
def test_train_and_save_goes_through_the_gate(tmp_path):
    """In its own interpreter with its own store, as a notebook kernel: a worse version of a served model is saved
    labelled rejected and the served version stays; gate=False promotes whatever it scores."""
    from bentoml._internal.models.model import Model

    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", GATED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    good_tag, good, _ = result["good"]
    worse_tag, worse, worse_compiled = result["worse"]
    assert good["status"] == "promoted" and worse["status"] == "rejected"
    assert worse["served_tag"] == good_tag and worse["score"] < good["score"] - worse["tolerance"]
    assert result["repr"].startswith(f"Saved(tag={worse_tag!r}, status='rejected', test_accuracy=")
    assert worse_compiled["format"] == "none" and "DummyClassifier" in worse_compiled["reason"]  # the fallback
    forced_tag, forced, _ = result["forced"]
    assert forced["status"] == "promoted" and forced["reason"].startswith("gate skipped")

    served = {m.name: m.tag for m in scan(tmp_path / "models")[0]}
    assert served == {"penguins-extra-trees": good_tag, "penguins-dummy": forced_tag}
    name, version = worse_tag.split(":")
    rejected = Model.from_path(tmp_path / "models" / name / version)
    assert rejected.info.labels[STATUS_LABEL] == "rejected" and rejected.info.metadata["gate"]["status"] == "rejected"


@pytest.mark.cli
def test_the_package_offers_train_and_save_without_importing_it_up_front():
    code = "import sys, penguins; assert 'sklearn' not in sys.modules; from penguins import train_and_save; print(1)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Saved.__dataclass_params__.frozen


# --- the README's section runs as written ----------------------------------------------------------------------------


def _readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Add your own classifier\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n```", 1)[0] for block in section.split(f"```{language}\n")[1:]]


def test_the_readme_commands_name_estimators_that_build():
    """Each `train.py` line of the section parses and its estimator builds (the CLI tests above train them)."""
    import shlex

    (bash,) = _readme_blocks("bash")
    commands = [shlex.split(line, comments=True) for line in bash.replace("\\\n", " ").splitlines()]
    trains = [c for c in commands if c[:3] == ["uv", "run", "python"] and c[3] == "train.py"]
    assert len(trains) == 2
    for command in trains:
        parser, args = train_cli.parse_args(command[4:])
        for name, estimator in train_cli.estimators(parser, args):
            assert check_model_name(name) and estimator(0).__class__.__name__.endswith("Classifier")


@pytest.mark.cli
def test_the_readme_python_runs_as_written(tmp_path):
    (python,) = _readme_blocks("python")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-c", python]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("Saved(tag='penguins-extra-trees:") and "status='promoted'" in done.stdout
    assert [m.name for m in scan(tmp_path / "models")[0]] == ["penguins-extra-trees"]
