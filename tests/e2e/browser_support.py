"""Shared by the browser tests and benchmarks/upload_to_card.py: a `streamlit run` server on a
free localhost port, chromium's launch flags, and upload -> result-card timing in the page's clock.

The timing is taken inside the page: a MutationObserver, armed just before the upload, notes
`performance.now()` when the card of the uploaded photo first holds its grade line, and again at
the next animation frame (when it is painted). Playwright's own `wait_for` polls with growing
intervals, so the time it returns overstates the wait by up to a few hundred ms; both are kept.
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CARD_TEXT = "Suggested grade:"  # result_card.grade_ui's line (gradable photos only)
GRADE_READY_TEXT = "Upload one or more fundus photos"  # the Grade page's last line, no photo yet

# Arms the observer. The card is the vertical block that holds the photo's h3 heading.
_ARM_JS = """([name, text]) => {
  window.__drT0 = performance.now(); window.__drCard = null; window.__drPainted = null;
  const ready = () => [...document.querySelectorAll('h3')].some(h => {
    if (!h.textContent.includes(name)) return false;
    const card = h.closest('[data-testid="stVerticalBlock"]');
    return card !== null && card.textContent.includes(text);
  });
  const obs = new MutationObserver(() => {
    if (window.__drCard !== null || !ready()) return;
    window.__drCard = performance.now() - window.__drT0; obs.disconnect();
    requestAnimationFrame(() => { window.__drPainted = performance.now() - window.__drT0; });
  });
  obs.observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


@dataclass(frozen=True)
class UploadTiming:
    """Milliseconds from the upload to the result card: in the DOM, painted, seen by playwright."""

    in_dom_ms: float
    painted_ms: float
    playwright_ms: float


def free_port() -> int:
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
    port = free_port()
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


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Until the app's script run has finished (streamlit's `data-test-script-state`)."""
    page.wait_for_function(
        """() => document.querySelector('[data-testid="stApp"]')
                   ?.getAttribute('data-test-script-state') === 'notRunning'""",
        timeout=timeout_ms)


def open_grade_page_ready(page) -> None:
    """Wait until the Grade page's first script run has finished (its closing hint shows).

    A person opens the file dialog after the page has drawn; an upload fired while the first
    run is still going would time that run too.
    """
    page.get_by_role("heading", name="Grade a fundus photo").wait_for(timeout=60_000)
    page.get_by_text(GRADE_READY_TEXT).first.wait_for(timeout=60_000)
    wait_idle(page)


def upload_and_time(page, files: list[Path], name: str) -> UploadTiming:
    """Upload `files` on the current page; wait until `name`'s result card shows its grade line."""
    page.evaluate(_ARM_JS, [name, CARD_TEXT])
    start = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
        [str(f) for f in files])
    card = page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_role(
        "heading", name=name)).last
    card.get_by_text(CARD_TEXT).first.wait_for(timeout=120_000)
    seen = (time.perf_counter() - start) * 1000
    page.wait_for_function("window.__drPainted !== null", timeout=10_000)
    in_dom, painted = page.evaluate("[window.__drCard, window.__drPainted]")
    return UploadTiming(in_dom, painted, seen)


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep_screenshot(path)


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to DR_SCREENSHOT_DIR when set (how docs/screenshots/ is refreshed)."""
    out = os.environ.get("DR_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def open_page(page, title: str, heading: str) -> None:
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
