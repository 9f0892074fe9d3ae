"""The explanation data saved with each model (unit tests on a small frame and on the session store) and the
explain / training_map endpoints and the /ui page in-process."""

import re

import numpy as np
import pytest

from penguins.contract import EXAMPLE_PENGUIN, FEATURES, SPECIES, Penguin, Prediction
from penguins.explain import CUSTOM_OBJECT, MAX_NEIGHBOURS, Explainer, frame_of
from penguins.loaded import load
from penguins.names import model_name
from penguins.predict import SklearnPredictor, columns_of
from penguins.scan import scan
from penguins.training import ALGORITHMS, split, train
from penguins.ui import STATIC
from tests.openapi import request_schema

QUERIES = [
    EXAMPLE_PENGUIN,
    {"island": "Dream", "bill_length_mm": 49.0, "bill_depth_mm": 18.5, "flipper_length_mm": 195, "body_mass_g": 3700},
    {
        "island": "torgersen",
        "bill_length_mm": 38.0,
        "bill_depth_mm": 19.0,
        "flipper_length_mm": 185,
        "body_mass_g": 3600,
        "sex": "male",
    },
]


@pytest.fixture(scope="module")
def small_knn(small_frame):
    return train("knn", small_frame, seed=1, compile=False)


@pytest.fixture(scope="module")
def small_explainer(small_knn):
    return Explainer.from_saved(small_knn.explanation, small_knn.pipeline)


def test_saved_rows_are_the_training_part_and_their_preprocessed_form(small_frame, small_knn):
    saved = small_knn.explanation
    train_part, _ = split(small_frame, 1)
    assert saved["species"] == train_part["species"].tolist()
    for feature in FEATURES:
        expected = [None if v != v else v for v in train_part[feature].tolist()]  # NaN -> None
        assert saved["rows"][feature] == expected
    preprocessed = small_knn.pipeline.named_steps["preprocess"].transform(train_part[list(FEATURES)])
    assert np.allclose(saved["preprocessed"], preprocessed)


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_neighbours_are_the_true_nearest_in_the_models_preprocessed_space(small_knn, small_explainer, query, k):
    frame = frame_of([Penguin(**query)])
    row = small_explainer.transform(frame)
    assert np.allclose(row, small_knn.pipeline.named_steps["preprocess"].transform(frame))
    found, distances = small_explainer.nearest(row[0], k)
    brute_force = np.linalg.norm(small_explainer.preprocessed - row[0], axis=1)
    assert len(found) == k and np.allclose(distances, brute_force[found])
    assert np.allclose(distances, np.sort(brute_force)[:k])  # nearest first, and no nearer penguin left out
    # The KNN model itself looks at the same neighbours: same space, same metric.
    own_distances, _ = small_knn.pipeline.named_steps["classifier"].kneighbors(row, n_neighbors=k)
    assert np.allclose(distances, own_distances[0])


def test_pca_is_fitted_on_the_preprocessed_training_set_and_projects_new_penguins(small_explainer):
    from sklearn.decomposition import PCA

    reference = PCA(n_components=2, svd_solver="full").fit(small_explainer.preprocessed)
    assert np.allclose(small_explainer.explained_variance, reference.explained_variance_ratio_)
    assert np.allclose(small_explainer.project(small_explainer.preprocessed), small_explainer.points)
    queries = np.vstack([small_explainer.transform(frame_of([Penguin(**q)])) for q in QUERIES])
    ours, theirs = small_explainer.project(queries), reference.transform(queries)
    signs = np.sign((ours * theirs).sum(axis=0))  # a principal axis is defined up to its sign
    assert np.allclose(ours, theirs * signs)


def test_explanation_places_the_penguin_and_its_neighbours_on_the_map(small_knn, small_explainer):
    penguin = Penguin(**EXAMPLE_PENGUIN)
    labels, probabilities = SklearnPredictor(small_knn.pipeline).predict(columns_of([penguin]))
    prediction = Prediction(
        species=labels[0], probabilities=dict(zip(SPECIES, probabilities[0], strict=True)), model="m:1"
    )
    explanation = small_explainer.explain(penguin, prediction, k=4)
    assert explanation.prediction == prediction and len(explanation.neighbours) == 4
    point = small_explainer.project(small_explainer.transform(frame_of([penguin])))[0]
    assert np.allclose([explanation.pca.x, explanation.pca.y], point)
    for neighbour in explanation.neighbours:
        assert np.allclose([neighbour.pca.x, neighbour.pca.y], small_explainer.points[neighbour.index])
        assert neighbour.species == small_explainer.species[neighbour.index]
        assert neighbour.penguin.bill_length_mm == small_explainer.rows["bill_length_mm"][neighbour.index]


def test_importance_is_the_models_own_or_permutation(small_frame, small_knn):
    forest = train("random-forest", small_frame, seed=1, compile=False).explanation["importance"]
    assert forest["method"] == "impurity" and set(forest["values"]) == set(FEATURES)
    assert sum(forest["values"].values()) == pytest.approx(1.0)
    knn = small_knn.explanation["importance"]
    assert knn["method"] == "permutation" and set(knn["values"]) == set(FEATURES)


def test_explanation_data_of_another_model_is_refused(small_frame, small_knn):
    other = train("knn", small_frame, seed=2, compile=False)  # another split: other training rows
    with pytest.raises(ValueError, match="does not match"):
        Explainer.from_saved(other.explanation, small_knn.pipeline)
    with pytest.raises(ValueError, match="format"):
        Explainer.from_saved({**small_knn.explanation, "format": 99}, small_knn.pipeline)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_explanation_data_is_saved_and_loaded_with_each_model(store_dir, trained, algorithm):
    model, tag = trained[algorithm]
    (stored,) = [m for m in scan(store_dir)[0] if m.name == model_name(algorithm)]
    loaded = load(stored)
    assert loaded.tag == tag and loaded.explainer is not None
    assert np.array_equal(loaded.explainer.preprocessed, model.explanation["preprocessed"])
    assert len(loaded.explainer.points) == model.provenance["train_rows"]

    import bentoml

    assert CUSTOM_OBJECT in bentoml.models.get(tag).custom_objects


# --- the endpoints, in-process ----------------------------------------------------------------------------------------


def test_explain_and_training_map_are_typed_in_the_openapi_docs(client):
    spec = client.get("/docs.json").json()
    assert {"/explain", "/training_map"} <= set(spec["paths"])
    body = request_schema(spec, "/explain")
    assert body["properties"]["penguin"]["$ref"].endswith("/Penguin")
    assert body["properties"]["k"]["maximum"] == MAX_NEIGHBOURS
    assert {"Neighbour", "MapPoint", "FeatureImportance", "TrainingPoint"} <= set(spec["components"]["schemas"])


def test_explain_answers_like_classify_with_the_neighbours_and_the_map_point(client, trained):
    explanation = client.post("/explain", json={"penguin": EXAMPLE_PENGUIN}).json()
    (classified,) = client.post("/classify", json={"penguins": [EXAMPLE_PENGUIN]}).json()
    assert explanation["prediction"] == classified  # the same model and predictor as classify
    neighbours = explanation["neighbours"]
    assert len(neighbours) == 5
    assert [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
    assert neighbours[0]["penguin"] == EXAMPLE_PENGUIN and neighbours[0]["distance"] == pytest.approx(0)

    training_map = client.post("/training_map", json={"model": classified["model"]}).json()
    assert training_map["model"] == classified["model"]
    algorithm = next(a for a, (_, tag) in trained.items() if tag == classified["model"])
    assert len(training_map["points"]) == trained[algorithm][0].provenance["train_rows"]
    for neighbour in neighbours:
        point = training_map["points"][neighbour["index"]]
        assert (point["x"], point["y"], point["species"]) == (
            neighbour["pca"]["x"],
            neighbour["pca"]["y"],
            neighbour["species"],
        )


@pytest.mark.parametrize("algorithm", ["knn", "gradient-boosting"])
def test_explain_takes_a_model_and_k(client, trained, algorithm):
    answer = client.post("/explain", json={"penguin": EXAMPLE_PENGUIN, "model": algorithm, "k": 3}).json()
    assert answer["prediction"]["model"] == trained[algorithm][1]
    assert len(answer["neighbours"]) == 3


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"penguin": {**EXAMPLE_PENGUIN, "island": "Atlantis"}}, ["penguin", "island"]),
        ({"penguin": {**EXAMPLE_PENGUIN, "body_mass_g": -5}}, ["penguin", "body_mass_g"]),
        ({"penguin": EXAMPLE_PENGUIN, "k": 0}, ["k"]),
        ({"penguin": EXAMPLE_PENGUIN, "k": MAX_NEIGHBOURS + 1}, ["k"]),
        ({}, ["penguin"]),
    ],
)
def test_explain_validates_like_classify(client, body, location):
    response = client.post("/explain", json=body)
    assert response.status_code == 400
    assert [d["loc"] for d in response.json()["detail"]] == [location]


def test_explain_and_map_of_an_unknown_model_are_404(client):
    for route, body in (("/explain", {"penguin": EXAMPLE_PENGUIN, "model": "nope"}), ("/training_map", {"model": "x"})):
        response = client.post(route, json=body)
        assert response.status_code == 404 and response.json()["field"] == "model"


# --- the page ---------------------------------------------------------------------------------------------------------


def test_the_page_is_served_at_ui_and_the_docs_stay_at_the_root(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert client.get(f"/ui/{asset}").status_code == 200, asset
    assert client.get("/ui/static/../__init__.py").status_code == 404
    assert "swagger" in client.get("/").text.lower()


def test_the_page_loads_nothing_from_the_internet():
    for path in STATIC.iterdir():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


def test_a_model_saved_before_explanations_still_serves_but_cannot_explain(tmp_path, store_dir, trained):
    import shutil

    import cloudpickle

    copy = tmp_path / "models"
    shutil.copytree(store_dir, copy)
    (stored,) = [m for m in scan(copy)[0] if m.name == model_name("knn")]
    pickled = stored.path / "custom_objects.pkl"
    objects = cloudpickle.loads(pickled.read_bytes())
    del objects[CUSTOM_OBJECT]
    pickled.write_bytes(cloudpickle.dumps(objects))
    loaded = load(stored)
    assert loaded.explainer is None and loaded.predict([Penguin(**EXAMPLE_PENGUIN)])[0]["species"] == "Gentoo"
    with pytest.raises(LookupError, match="without explanation data"):
        loaded.explain(Penguin(**EXAMPLE_PENGUIN), 5)
