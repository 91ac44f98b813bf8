"""Shared set-up for the dashboard page tests: tiny bundles, a tmp DB and upload helpers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import TINY_VIT, fundus_like, make_lora_bundles, make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
VIEWS = REPO / "dashboard" / "views"
TIMEOUT = 120


def build_models(root: Path, *, vit: bool = True) -> Path:
    """tiny-cnn (demo) always; with vit: a non-demo tiny ViT, a LoRA over it and an encoder."""
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_bundle(root, "tiny-cnn", seed=0)
    if vit:
        base = make_tiny_bundle(root, "tiny-vit", arch=TINY_VIT, seed=1, demo=False)
        make_lora_bundles(root, base, ["tiny-lora"])
        make_tiny_bundle(root, "tiny-encoder", arch=TINY_VIT, seed=2, outputs=("features",))
    return root


def use_env(monkeypatch, models: Path, tmp_path: Path) -> Path:
    db = tmp_path / "signoffs.db"
    monkeypatch.setenv("DR_MODELS_DIR", str(models))
    monkeypatch.setenv("DR_DB_PATH", str(db))
    return db


def start_page(page: str, models: Path, tmp_path: Path, monkeypatch):
    """AppTest of one page over `models`, with a fresh sign-off database; first run checked."""
    from streamlit.testing.v1 import AppTest

    use_env(monkeypatch, models, tmp_path)
    at = AppTest.from_file(page, default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def fundus_png(seed: int = 0, size: int = 512) -> bytes:
    return png(fundus_like(seed, size))


def grey_png(size: int = 512) -> bytes:
    return png(np.full((size, size, 3), 128, np.uint8))


def noise_png(size: int = 512, seed: int = 0) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def texts(at, kind: str) -> list[str]:
    """Every value of one element kind (error, warning, markdown, caption...)."""
    return [str(e.value) for e in getattr(at, kind)]


def all_text(at) -> str:
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning",
                 "info", "success"):
        parts += texts(at, kind)
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)
