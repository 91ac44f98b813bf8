"""End to end in a real browser: Debian chromium + playwright against `streamlit run`.

Uploads a photo on Grade, waits for the result card and the heatmap, then opens Compare tiers
and waits for its table. Prints upload -> result-card timings in the page's clock (first:
includes loading the model; then model already loaded; see browser_support.py and
benchmarks/upload_to_card.py for repeated runs). Screenshots go under tmp_path and, when
DR_SCREENSHOT_DIR is set, there too (one per page). DR_E2E_MODELS_DIR points the server at
another models folder (e.g. the shipped demo bundles) instead of the tiny ones built here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from core.manifest import Provenance
from core.synthetic import Nuisance, generate_fundus
from tests.e2e.browser_support import (
    ARGS,
    CHROMIUM,
    open_grade_page_ready,
    open_page,
    shot,
    streamlit_server,
    upload_and_time,
    wait_idle,
)
from tests.helpers import TINY_VIT, make_lora_bundles, make_tiny_bundle

pytestmark = pytest.mark.browser
EVALUATION = {
    "n": 120, "accuracy": 0.64, "kappa_quadratic": 0.74, "kappa": 0.51, "macro_auroc": 0.83,
    "referable": {"sensitivity": 0.91, "specificity": 0.72, "auroc": 0.88, "threshold": 0.31},
    "vision_threatening": {"sensitivity": 0.9, "specificity": 0.8, "auroc": 0.9, "threshold": 0.2},
    "ece": 0.05,
    "confusion_matrix": [[40, 6, 2, 0, 0], [5, 9, 3, 0, 0], [2, 3, 25, 3, 0], [0, 0, 2, 8, 1],
                         [0, 0, 1, 2, 8]],
    "reliability": {"edges": [0, 0.2, 0.4, 0.6, 0.8, 1.0], "confidence": [None, 0.33, 0.52, 0.71,
                                                                          0.9],
                    "accuracy": [None, 0.3, 0.45, 0.7, 0.93], "count": [0, 10, 30, 40, 40]},
}


def _models(root: Path, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text(
        "epoch,train_loss,val_loss,val_kappa_quadratic\n0,1.42,1.30,0.31\n1,1.10,1.05,0.52\n"
        "2,0.93,0.97,0.66\n3,0.85,0.95,0.71\n")
    make_tiny_bundle(root, "tiny-cnn", evaluation=EVALUATION,
                     provenance=Provenance("synthetic fundus images (test)", run_dir=str(run_dir)))
    base = make_tiny_bundle(root, "tiny-vit", arch=TINY_VIT, seed=1)
    make_lora_bundles(root, base, ["tiny-lora"])
    return root


def test_grade_then_compare_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    # DR_E2E_MODELS_DIR=models runs the same walk over the shipped demo bundles (screenshots
    # for docs/); by default tiny bundles built here, with a fixture evaluation for the Models page.
    chosen = os.environ.get("DR_E2E_MODELS_DIR")
    models = Path(chosen).resolve() if chosen else _models(tmp_path / "models", tmp_path / "run")
    photos = []
    for seed, grade in ((1, 2), (2, 0)):  # synthetic photos: never a patient's
        path = tmp_path / f"eye{seed}.jpg"
        image = generate_fundus(grade, seed, size=600, nuisance=Nuisance()).image
        Image.fromarray(image).save(path, quality=92)
        photos.append(path)
    with streamlit_server(tmp_path, DR_MODELS_DIR=str(models)) as port, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2400})
        page.goto(f"http://127.0.0.1:{port}/")
        open_grade_page_ready(page)
        first = upload_and_time(page, [photos[0]], "eye1.jpg")
        page.reload()  # a fresh session: the model stays loaded in the server process
        open_grade_page_ready(page)
        warm = upload_and_time(page, [photos[1]], "eye2.jpg")
        wait_idle(page)  # the first card drawn in full (heatmap too), as a person would see it
        both = upload_and_time(page, [photos[0]], "eye1.jpg")  # adds a second photo
        page.get_by_text("Highlighted: regions that most influenced").first.wait_for()
        page.locator('[data-testid="stImage"]').nth(5).wait_for(timeout=120_000)  # 3 per photo
        assert page.get_by_text("Research use only.").count() >= 1
        shot(page, tmp_path, "grade")
        for label, t in (("first, includes model load", first),
                         ("model loaded, new session, one photo", warm),
                         ("second photo added beside the first", both)):
            print(f"\nupload -> result card ({label}): painted {t.painted_ms:.0f} ms "
                  f"(in DOM {t.in_dom_ms:.0f}; playwright saw it at {t.playwright_ms:.0f})", end="")
        assert first.in_dom_ms <= first.painted_ms  # the page's clock saw the card, then painted it
        assert first.in_dom_ms <= first.playwright_ms + 100

        open_page(page, "Compare tiers", "Compare model tiers")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            str(photos[0]))
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=120_000)
        page.locator('[data-testid="stImage"]').nth(3).wait_for(timeout=120_000)
        wait_idle(page)  # every tier's heatmap drawn
        shot(page, tmp_path, "compare")

        open_page(page, "Explain", "Explain a result")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            str(photos[0]))
        page.get_by_text("raw peak strength").first.wait_for(timeout=120_000)
        wait_idle(page)
        shot(page, tmp_path, "explain")

        open_page(page, "Models", "Installed models")
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        wait_idle(page)
        shot(page, tmp_path, "models")
        browser.close()
    assert (tmp_path / "grade.png").stat().st_size > 10_000
