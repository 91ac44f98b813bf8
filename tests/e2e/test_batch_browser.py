"""Batch screening in a real browser: Debian chromium + playwright against `streamlit run`.

Uploads several synthetic photos and a broken file on Batch screening, waits for the worklist,
opens a photo by clicking its row, downloads the per-photo CSV and checks it. Prints upload ->
worklist time. Screenshots go under tmp_path and, when DR_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from core.synthetic import Nuisance, generate_fundus
from core.wording import RESEARCH_USE_NOTICE
from tests.e2e.browser_support import ARGS, CHROMIUM, open_page, shot, streamlit_server
from tests.helpers import make_tiny_bundle

pytestmark = pytest.mark.browser
N_PHOTOS = 5


def _photos(folder: Path) -> list[Path]:
    """Synthetic photos (never a patient's), EyePACS-style names, plus one broken file."""
    folder.mkdir()
    paths = []
    for i in range(N_PHOTOS):
        path = folder / f"{20 + i // 2}_{'left' if i % 2 else 'right'}.jpg"
        image = generate_fundus(i % 5, i, size=512, nuisance=Nuisance()).image
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return [*paths, broken]


def test_batch_upload_worklist_and_csv_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    # DR_E2E_MODELS_DIR=models: the same walk over the shipped demo bundles (docs screenshot)
    chosen = os.environ.get("DR_E2E_MODELS_DIR")
    models = Path(chosen).resolve() if chosen else tmp_path / "models"
    if not chosen:
        make_tiny_bundle(models, "tiny-cnn")
    photos = _photos(tmp_path / "photos")
    with streamlit_server(tmp_path, DR_MODELS_DIR=str(models),
                          DR_SCREEN_ROOTS=str(tmp_path / "photos")) as port, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2000},
                                accept_downloads=True)
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("heading", name="Grade a fundus photo").wait_for(timeout=60_000)
        open_page(page, "Batch screening", "Batch screening")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            [str(p) for p in photos])
        start = page.get_by_role("button", name="Start screening")
        page.wait_for_function(  # enabled once the uploads reached the server
            "() => [...document.querySelectorAll('button')].some(b => "
            "b.innerText.includes('Start screening') && !b.disabled)", timeout=60_000)
        began = time.perf_counter()
        start.click()
        page.get_by_role("heading", name="Worklist - run 1").wait_for(timeout=180_000)
        seconds = time.perf_counter() - began
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
        assert page.get_by_text("Research use only.").count() >= 1

        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="CSV per photo").click()
        text = Path(info.value.path()).read_text(encoding="utf-8")
        assert text.startswith(f"# {RESEARCH_USE_NOTICE}")
        df = pd.read_csv(io.StringIO(text), comment="#")
        assert sorted(df["file"]) == sorted(p.name for p in photos)
        assert df.loc[df["file"] == "broken.jpg", "error"].str.contains("broken.jpg").all()
        graded_by = set(df.loc[df["file"] != "broken.jpg", "model"])
        assert graded_by == ({"tiny-cnn"} if not chosen else graded_by) and len(graded_by) == 1
        table = page.locator('[data-testid="stDataFrame"]').first
        table.scroll_into_view_if_needed()
        table.click(position={"x": 12, "y": 36 + 32})  # the first row's selection cell
        page.get_by_text("Clinician sign-off").wait_for(timeout=120_000)
        page.get_by_text("Highlighted: regions that most influenced").first.wait_for()
        shot(page, tmp_path, "batch")
        print(f"\nupload of {len(photos)} files -> worklist: {seconds * 1000:.0f} ms "
              "(includes loading the model)")
        browser.close()
    assert (tmp_path / "batch.png").stat().st_size > 10_000
