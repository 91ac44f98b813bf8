"""End to end in a real browser: Debian chromium + playwright against `streamlit run`.

Uploads a photo on Grade, waits for the result card and the heatmap, then opens Compare tiers
and waits for its table. Prints upload -> result-card timings (first: includes loading the
model; second: model already loaded). Screenshots go under tmp_path and, when
DR_SCREENSHOT_DIR is set, there too (one per page). DR_E2E_MODELS_DIR points the server at
another models folder (e.g. the shipped demo bundles) instead of the tiny ones built here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from core.manifest import Provenance
from core.synthetic import Nuisance, generate_fundus
from tests.dashboard.pages_support import REPO
from tests.helpers import TINY_VIT, make_lora_bundles, make_tiny_bundle

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy in time")


@contextlib.contextmanager
def streamlit_server(tmp_path: Path, **env_vars: str):
    """`streamlit run dashboard/app.py` on a free localhost port; ended by its PID afterwards."""
    port = _free_port()
    env = {**os.environ, "DR_DB_PATH": str(tmp_path / "db.sqlite"),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **env_vars}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.headless", "true"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    out = os.environ.get("DR_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def _open_page(page, title: str, heading: str) -> None:
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)


def _upload_and_wait(page, files: list[Path], name: str) -> float:
    """Upload; return seconds until that photo's result card shows a grade (or ungradable)."""
    start = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
        [str(f) for f in files])
    card = page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_role(
        "heading", name=name)).last
    card.get_by_text("Suggested grade:").first.wait_for(timeout=120_000)
    return time.perf_counter() - start


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
        page.get_by_role("heading", name="Grade a fundus photo").wait_for(timeout=60_000)
        first = _upload_and_wait(page, [photos[0]], "eye1.jpg")
        page.reload()  # a fresh session: the model stays loaded in the server process
        page.get_by_role("heading", name="Grade a fundus photo").wait_for(timeout=60_000)
        warm = _upload_and_wait(page, [photos[1]], "eye2.jpg")
        both = _upload_and_wait(page, [photos[0]], "eye1.jpg")  # adds a second photo
        page.get_by_text("Highlighted: regions that most influenced").first.wait_for()
        page.locator('[data-testid="stImage"]').nth(5).wait_for(timeout=120_000)  # 3 per photo
        assert page.get_by_text("Research use only.").count() >= 1
        _shot(page, tmp_path, "grade")
        print(f"\nupload -> result card: {first * 1000:.0f} ms (first, includes model "
              f"load); {warm * 1000:.0f} ms (model loaded, new session, one photo); "
              f"{both * 1000:.0f} ms (second photo added beside the first)")

        _open_page(page, "Compare tiers", "Compare model tiers")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            str(photos[0]))
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=120_000)
        page.locator('[data-testid="stImage"]').nth(3).wait_for(timeout=120_000)
        _shot(page, tmp_path, "compare")

        _open_page(page, "Explain", "Explain a result")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
            str(photos[0]))
        page.get_by_text("raw peak strength").nth(1).wait_for(timeout=120_000)
        _shot(page, tmp_path, "explain")

        _open_page(page, "Models", "Installed models")
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        _shot(page, tmp_path, "models")
        browser.close()
    assert (tmp_path / "grade.png").stat().st_size > 10_000
