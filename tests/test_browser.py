"""The /ui page in headless Chromium (Debian's `chromium` package driven by Playwright) against a real `bentoml serve`.

Needs /usr/bin/chromium (`apt-get install -y chromium`; see tests/browser.py). Screenshots go to
test-artifacts/ (gitignored); with PENGUINS_UPDATE_DOCS_SCREENSHOT=1 the README's docs/ui.png is rewritten too.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import httpx
import pytest

from penguins.contract import EXAMPLE_PENGUIN
from penguins.names import model_name
from tests import browser as browser_tools
from tests.browser import ARTIFACTS, TIMEOUT_MS
from tests.harness import ROOT, run_train, serve
from tests.tiers import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.browser]

DOCS_SCREENSHOT = ROOT / "docs" / "ui.png"
MODELS = ("logistic-regression", "random-forest")

if reason := browser_tools.missing():
    unavailable(reason, module=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser") / "home"
    run_train(home, "--models", *MODELS)
    with serve(home, home.parent / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with browser_tools.chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser, server):
    with _opened(browser, server) as page:
        yield page


@contextlib.contextmanager
def _opened(browser, server):
    """A fresh page on /ui whose every request outside the service is refused and recorded: the page must work
    offline."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside: list[str] = []
    errors: list[str] = []

    def guard(route):
        if route.request.url.startswith(server) or route.request.url.startswith("data:"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/ui")
    # Ready, and the example's first answer shown: a test's own submit must not meet that answer on its way.
    page.wait_for_selector("body[data-ready='true']:not([aria-busy])", state="attached")
    yield page
    assert outside == [], f"the page reached outside the service: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"
    context.close()


def test_the_client_has_explain(server):
    import bentoml

    with bentoml.SyncHTTPClient(server) as client:
        answer = client.explain(penguin=EXAMPLE_PENGUIN, model="random-forest", k=3)
        assert answer["prediction"]["species"] == "Gentoo" and len(answer["neighbours"]) == 3
        assert client.training_map(model=answer["prediction"]["model"])["model"] == answer["prediction"]["model"]


def _submit(page):
    """Submit the form; return the /explain response once the page has shown it (it clears aria-busy then)."""
    with page.expect_response(lambda r: r.url.endswith("/explain")) as answer:
        page.click("#submit")
    page.wait_for_selector("body:not([aria-busy])", state="attached")
    return answer.value


def test_example_is_classified_with_its_neighbours_and_map(page):
    assert page.input_value("#field-island") == EXAMPLE_PENGUIN["island"]
    assert float(page.input_value("#field-body_mass_g")) == EXAMPLE_PENGUIN["body_mass_g"]
    assert page.get_by_label("Bill length (mm)").input_value() == str(EXAMPLE_PENGUIN["bill_length_mm"])
    assert _submit(page).status == 200

    page.wait_for_selector("#map svg #map-penguin")
    assert page.text_content("#species") == "Gentoo"
    assert page.locator("#probabilities li").count() == 3
    assert page.locator("#neighbours tbody tr").count() == 5
    drawn = page.locator("#map svg .map-training circle").count()
    assert drawn == int(page.get_attribute("#map svg", "data-points")) > 200
    assert page.locator("#map svg .map-neighbour").count() == 5
    assert page.get_attribute("#map svg", "data-model") == page.text_content("#model-tag")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)


def test_invalid_values_show_the_apis_message_next_to_the_field(page):
    page.fill("#field-body_mass_g", "-5")
    page.fill("#field-bill_length_mm", "long")
    response = _submit(page)
    assert response.status == 400
    assert "at least 900 g" in page.text_content("#error-body_mass_g")
    assert "valid number" in page.text_content("#error-bill_length_mm")
    assert page.get_attribute("#field-body_mass_g", "aria-invalid") == "true"
    assert page.text_content("#error-island") == ""
    # Fixed, the errors go away.
    page.fill("#field-body_mass_g", "4500")
    page.fill("#field-bill_length_mm", "46.1")
    assert _submit(page).status == 200
    assert page.text_content("#error-body_mass_g") == ""
    assert page.get_attribute("#field-body_mass_g", "aria-invalid") is None


def test_switching_the_model_changes_the_answers_model_tag(page):
    options = page.locator("#model option").evaluate_all("options => options.map(o => o.value)")
    assert options == ["", *sorted(model_name(m) for m in MODELS)]
    for algorithm in MODELS:
        with page.expect_response(lambda r: r.url.endswith("/explain")):
            page.select_option("#model", model_name(algorithm))
        page.wait_for_function(
            "name => document.querySelector('#map svg')?.dataset.model.startsWith(name + ':')",
            arg=model_name(algorithm),
        )
        assert page.text_content("#model-tag").startswith(model_name(algorithm) + ":")
    page.screenshot(path=str(ARTIFACTS / "ui-model.png"), full_page=True)


def test_a_model_trained_while_the_page_is_open_is_offered_when_one_comes_back_to_it(browser, tmp_path):
    """Train in JupyterLab's tab, reload, come back to the page's tab: the new model is in the list and answers;
    once removed from the store, it leaves the list and the best model answers instead."""
    home = tmp_path / "home"
    run_train(home, "--models", "logistic-regression")
    with serve(home, tmp_path / "serve.log") as url, _opened(browser, url) as page:
        own = model_name("extra-trees")
        listed = "() => [...document.querySelectorAll('#model option')].map(o => o.value)"
        assert page.evaluate(listed) == ["", model_name("logistic-regression")]
        run_train(home, "--estimator", "sklearn.ensemble.ExtraTreesClassifier", "--name", "extra-trees")
        assert httpx.post(f"{url}/reload", timeout=60).json()["routes_added"] == ["/classify_extra_trees"]
        page.evaluate("window.dispatchEvent(new Event('focus'))")  # what switching back to the tab fires
        page.wait_for_selector(f"#model option[value='{own}']", state="attached")
        with page.expect_response(lambda r: r.url.endswith("/explain")) as answer:
            page.select_option("#model", own)
        assert answer.value.json()["prediction"]["model"].startswith(own + ":")
        page.wait_for_function(
            "name => document.querySelector('#map svg')?.dataset.model.startsWith(name + ':')", arg=own
        )
        assert page.text_content("#model-tag").startswith(own + ":")

        shutil.rmtree(home / "models" / own)
        assert httpx.post(f"{url}/reload", timeout=60).json()["routes_removed"] == ["/classify_extra_trees"]
        with page.expect_response(lambda r: r.url.endswith("/explain")) as answer:
            page.evaluate("window.dispatchEvent(new Event('focus'))")
        assert answer.value.ok
        assert page.evaluate(listed) == ["", model_name("logistic-regression")]
        assert page.input_value("#model") == ""
        page.wait_for_function(
            "name => document.querySelector('#model-tag')?.textContent.startsWith(name + ':')",
            arg=model_name("logistic-regression"),
        )


def test_usable_at_phone_width(page):
    page.set_viewport_size({"width": 375, "height": 800})
    page.wait_for_selector("#map svg #map-penguin")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = page.locator("#field-island").bounding_box()
    assert box and box["width"] > 250  # one column of full-width fields
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-phone.png"), full_page=True)


def test_readme_screenshot(browser, server, tmp_path):
    """The README's picture of the page: the whole page, scaled down to stay small. It replaces the committed
    picture with PENGUINS_UPDATE_DOCS_SCREENSHOT=1, and is only taken (into a temporary file) otherwise."""
    update = bool(os.environ.get("PENGUINS_UPDATE_DOCS_SCREENSHOT"))
    picture = DOCS_SCREENSHOT if update else tmp_path / DOCS_SCREENSHOT.name
    context = browser.new_context(viewport={"width": 1100, "height": 900}, device_scale_factor=0.7)
    page = context.new_page()
    page.goto(f"{server}/ui")
    page.wait_for_selector("#map svg #map-penguin", timeout=TIMEOUT_MS)
    page.wait_for_selector("#neighbours tbody tr", timeout=TIMEOUT_MS)
    page.screenshot(path=str(picture), full_page=True)
    context.close()
    assert picture.stat().st_size < 150_000


def test_the_docs_page_loads_nothing_from_outside_the_service(browser, server):
    """BentoML's page at / loaded Google Tag Manager, and the document's description four badge images."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    requested: list[str] = []

    def guard(route):
        requested.append(route.request.url)
        if route.request.url.startswith(server) or route.request.url.startswith("data:"):
            return route.continue_()
        return route.abort()

    context.route("**/*", guard)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.wait_for_selector(".opblock-summary-path[data-path='/classify']")  # Swagger UI drew the operations
        page.click(".opblock-summary-path[data-path='/classify']")
        page.wait_for_selector(".opblock.is-open .responses-table")
        page.wait_for_load_state("networkidle")
        title = page.locator(".info .title").first
        assert title.text_content().startswith("Palmer Penguins classifier")
        assert title.evaluate("e => getComputedStyle(e).visibility") == "visible"  # BentoML's stylesheet hid it
        assert "BentoML Service API" not in page.content()  # the service's own tags, not BentoML's boilerplate
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"))
    finally:
        context.close()
    outside = [url for url in requested if not url.startswith((server, "data:"))]
    assert outside == [], f"the docs page reached outside the service: {outside}"
    assert f"{server}/docs.json" in requested
