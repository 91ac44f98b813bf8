"""Issue 12 in a real browser (Debian chromium + playwright against `streamlit run`).

- Grade cards: referable, not referable, needs review, not a fundus photograph. The photos are
  picked in-process with the same bundle, so the card states exist whatever the models are.
- Compare tiers: no green agreement from demo / near-chance tiers.
- Batch: two downloads straight in a row both arrive ("Deferred file ... not found" before);
  the Patients tab.

Screenshots go under tmp_path and, when DR_SCREENSHOT_DIR is set, there too. With
DR_E2E_MODELS_DIR=models the walk uses the shipped bundles (the docs screenshots).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bundle import discover_bundles
from core.grading import NOT_FUNDUS_HEADLINE
from core.predict import Predictor
from core.synthetic import Nuisance, generate_fundus
from tests.e2e.browser_support import (
    ARGS,
    CHROMIUM,
    keep_screenshot,
    streamlit_server,
    wait_idle,
)
from tests.helpers import make_tiny_bundle

pytestmark = pytest.mark.browser
STATES = ("referable", "not_referable", "needs_review")


def _state(pred) -> str | None:
    if not pred.gradable:
        return None
    if pred.review_reasons:
        return "needs_review"
    return "referable" if pred.referable else "not_referable"


def _pick_photos(bundle, folder: Path, budget: int = 40) -> dict[str, Path]:
    """One synthetic photo per card state (first found), plus a picture that is not a fundus."""
    folder.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(bundle, device="cpu")
    found: dict[str, Path] = {}
    for i in range(budget):
        grade, seed = (0, 4, 2, 1, 3)[i % 5], 200 + i // 5
        rgb = generate_fundus(grade, seed, size=512, nuisance=Nuisance()).image
        state = _state(predictor.predict(rgb))
        if state and state not in found:
            found[state] = folder / f"{state.replace('_', '-')}-photo.png"
            Image.fromarray(rgb).save(found[state])
        if len(found) == len(STATES):
            break
    noise = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    found["not_fundus"] = folder / "not-a-fundus.png"
    Image.fromarray(noise).save(found["not_fundus"])
    return found


def _card(page, name: str):
    return page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_role(
        "heading", name=name, exact=True)).last


def _save(locator, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    locator.screenshot(path=str(path))
    keep_screenshot(path)
    return path


def _open(page, title: str, heading: str) -> None:
    """open_page with the patience a loaded 2-core machine needs."""
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=600_000)
    wait_idle(page, 600_000)


def _upload(page, files: list[Path]) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
        [str(f) for f in files])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A `streamlit run` server over the chosen models, a chromium page, and picked photos."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("e2e")
    chosen = os.environ.get("DR_E2E_MODELS_DIR")
    models = Path(chosen).resolve() if chosen else tmp / "models"
    if not chosen:
        make_tiny_bundle(models, "tiny-cnn")
    graders = [b for b in discover_bundles(models).bundles if "icdr_grade" in b.manifest.outputs]
    first = sorted(graders, key=lambda b: b.name)[0]  # the Grade page's default bundle
    photos = _pick_photos(first, tmp / "photos")
    with streamlit_server(tmp, DR_MODELS_DIR=str(models)) as port, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1800}, accept_downloads=True)
        page.set_default_timeout(180_000)
        page.goto(f"http://127.0.0.1:{port}/")
        yield page, photos, graders, tmp
        browser.close()


@pytest.mark.timeout(1200)
def test_grade_cards(app):
    page, photos, _, tmp = app
    page.get_by_role("heading", name="Grade a fundus photo").wait_for(timeout=600_000)
    wait_idle(page, 600_000)
    for state, path in photos.items():
        _upload(page, [path])
        card = _card(page, path.name)
        expected = NOT_FUNDUS_HEADLINE if state == "not_fundus" else "Suggested grade:"
        card.get_by_text(expected).first.wait_for()
        wait_idle(page, 300_000)
        if state == "needs_review":
            assert card.get_by_text("Needs review - this answer is fragile").count() == 1
        if state == "not_fundus":
            assert card.get_by_text("Record as wrong upload").count() == 1
            assert card.get_by_text("Accept suggestion").count() == 0
        else:
            card.get_by_text("explains the displayed grade").first.wait_for()
        _save(card, tmp, f"grade_card_{state}")


@pytest.mark.timeout(1200)
def test_compare_without_false_agreement(app):
    page, photos, graders, tmp = app
    _open(page, "Compare tiers", "Compare model tiers")
    _upload(page, [photos.get("needs_review") or photos["not_fundus"]])
    page.get_by_text("Un-annotated photo").first.wait_for()
    wait_idle(page, 300_000)
    if sum(not b.manifest.demo for b in graders) < 2:
        assert page.locator('[data-testid="stAlertContentSuccess"]').count() == 0
    page.screenshot(path=str(tmp / "compare_tiers.png"), full_page=True)
    keep_screenshot(tmp / "compare_tiers.png")


@pytest.mark.timeout(1200)
def test_two_downloads_in_a_row_and_patients_tab(app):
    page, photos, _, tmp = app
    _open(page, "Batch screening", "Batch screening")
    _upload(page, list(photos.values()))
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some(b => "
        "b.innerText.includes('Start screening') && !b.disabled)")
    page.get_by_role("button", name="Start screening").click()
    page.get_by_role("heading", name="Worklist - run 1").wait_for(timeout=600_000)
    wait_idle(page, 300_000)
    # two downloads straight in a row: both must arrive (the second did nothing before)
    with page.expect_download(timeout=60_000) as csv_info:
        page.get_by_role("button", name="CSV per photo").click()
    with page.expect_download(timeout=60_000) as pdf_info:
        page.get_by_role("button", name="PDF report (run)").click()
    assert Path(csv_info.value.path()).read_bytes().startswith(b"# Research use only.")
    assert Path(pdf_info.value.path()).read_bytes().startswith(b"%PDF")
    with page.expect_download(timeout=60_000) as again:
        page.get_by_role("button", name="CSV per patient").click()
    assert Path(again.value.path()).stat().st_size > 100
    page.get_by_role("tab", name="Patients").click()
    table = page.locator('[data-testid="stTable"]').last
    table.get_by_text("Re-image, or refer").first.wait_for()  # guidance readable in full
    table.scroll_into_view_if_needed()
    _save(page.locator('[data-testid="stTabs"]').last, tmp, "batch_patients_tab")
