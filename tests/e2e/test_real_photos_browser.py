"""The shipped default bundle on real photos, in a real browser, as a clinician opens it.

Serves the repository's own models/ folder (the shipped bundles), uploads real EyePACS photos
from ../shared/fundus_samples one at a time on the Grade page, and checks what the card says:
the default model is the one trained on real photos and says so, and each photo gets a grade
line and a guideline. With DR_SCREENSHOT_DIR set, one screenshot per photo is kept (the ones in
docs/screenshots/ were taken this way).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core.bundle import discover_bundles
from tests.e2e.browser_support import (
    ARGS,
    CARD_TEXT,
    CHROMIUM,
    REPO,
    open_grade_page_ready,
    shot,
    streamlit_server,
    wait_idle,
)

pytestmark = pytest.mark.browser
SAMPLES = REPO.parent / "shared" / "fundus_samples"
# grade 0, 2 and 3 from patients outside ../shared/realdata (never trained on); grade 4 from a
# patient whose photos are in ../shared/realdata/eyepacs (no unseen grade-4 sample exists)
PHOTOS = ("52_right.jpeg", "40_left.jpeg", "531_right.jpeg", "16_right.jpeg")
DEFAULT = "multisource-lite0"  # trained on EyePACS, Messidor-2 and IDRiD (models/README.md)


def _grades() -> dict[str, str]:
    with (SAMPLES / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return {r["image"]: r["level"] for r in csv.DictReader(fh)}


def test_default_bundle_on_real_photos(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if not SAMPLES.is_dir():
        pytest.skip("../shared/fundus_samples is not beside the checkout")
    if DEFAULT not in {b.name for b in discover_bundles(REPO / "models").bundles}:
        pytest.skip(f"models/{DEFAULT} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    grades = _grades()
    version = next(b for b in discover_bundles(REPO / "models").bundles
                   if b.name == DEFAULT).manifest.version
    with streamlit_server(tmp_path, DR_MODELS_DIR=str(REPO / "models")) as port, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2200})
        for name in PHOTOS:
            page.goto(f"http://127.0.0.1:{port}/")
            open_grade_page_ready(page)
            body = page.locator("body")
            selected = page.locator('[data-testid="stSelectbox"]').first.inner_html()
            assert f"{DEFAULT} {version} (Baseline CNN)" in selected  # the default bundle
            assert "real photos from 3 sets (EyePACS, Messidor-2, IDRiD)" in body.inner_text()
            assert "DEMO MODEL" not in body.inner_text()
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                [str(SAMPLES / name)])
            card = page.locator('[data-testid="stVerticalBlock"]',
                                has=page.get_by_role("heading", name=name)).last
            card.get_by_text(CARD_TEXT).first.wait_for(timeout=120_000)
            wait_idle(page)
            text = card.inner_text()
            assert "Guideline:" in text
            card.get_by_text("Model, preprocessing and thresholds used").first.click()
            card.get_by_text("Graded with (DR_CPU_ONNX)").first.wait_for(timeout=10_000)
            assert "ONNX Runtime (the bundle's verified ONNX graph)" in card.inner_text()
            shot(page, tmp_path, f"grade_real_{Path(name).stem}_g{grades[name]}")
        browser.close()
