"""ONNX Runtime grades real photos as PyTorch does (issue 34), as served (flip TTA where
calibrated so): probabilities within 1e-4 and the same decision (grade, referable,
vision-threatening, urgency, needs review, not a fundus, and any field added to
core.grading.Decision later, e.g. DME). The default grader on every photo of
../shared/fundus_samples and 200 of ../shared/realdata (the first 67 EyePACS, 67 Messidor-2 and
66 IDRiD photos by sorted path); every other shipped grader on the fundus_samples (PyTorch's
side of the comparison is what takes the time: about 2 minutes on 2 cores in all).

The photos are prepared once per preprocessing spec and graded by both engines from the same
tensors, so only the engine differs. Skips when ../shared is not beside the checkout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import settings
from core.bundle import discover_bundles
from core.cache import ModelCache
from core.images import SUPPORTED_SUFFIXES, decode_image
from core.predict import Predictor, prepare_image
from core.preprocessing import decode_min_side
from tests.conftest import SAMPLES_DIR
from tests.helpers import decision_fields

REALDATA = SAMPLES_DIR.parent / "realdata"
PER_SOURCE = {"eyepacs/train": 67, "messidor2/IMAGES": 67,
              "idrid/B. Disease Grading/1. Original Images/a. Training Set": 66}
ATOL = 1e-4
DEFAULT = "multisource-lite0"  # the dashboard's first bundle

GRADERS = [b for b in discover_bundles(settings.REPO / "models").bundles
           if "icdr_grade" in b.manifest.outputs]


def _photos() -> tuple[list[Path], list[Path]]:
    """(fundus_samples, the 200 realdata photos)."""
    if not SAMPLES_DIR.is_dir() or not REALDATA.is_dir():
        pytest.skip("../shared/fundus_samples and ../shared/realdata are not beside this checkout")
    samples = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
    real = []
    for sub, n in PER_SOURCE.items():
        found = sorted(p for p in (REALDATA / sub).iterdir()
                       if p.suffix.lower() in SUPPORTED_SUFFIXES)
        assert len(found) >= n, f"{sub}: {len(found)} photos"
        real += found[:n]
    return samples, real


@pytest.fixture(scope="module")
def prepared() -> dict:
    """Per preprocessing spec and photo set: (path, PreparedImage) for every photo."""
    samples, real = _photos()
    out: dict = {}
    for spec in dict.fromkeys(b.manifest.preprocessing for b in GRADERS):
        default = any(b.name == DEFAULT and b.manifest.preprocessing == spec for b in GRADERS)
        items = []
        for path in samples + (real if default else []):
            rgb = decode_image(path, min_side=decode_min_side(spec))
            items.append((path, prepare_image(rgb, spec)))
        out[spec] = items
    return out


def test_every_shipped_grader_carries_a_graph() -> None:
    assert {b.name for b in GRADERS} >= {"multisource-lite0", "eyepacs-lite0", "demo-baseline",
                                         "demo-retfound", "demo-lora"}
    assert all(b.manifest.onnx is not None for b in GRADERS)


@pytest.mark.parametrize("bundle", GRADERS, ids=lambda b: b.name)
def test_onnx_runtime_agrees_with_pytorch_on_real_photos(bundle, prepared) -> None:
    items = prepared[bundle.manifest.preprocessing]
    if bundle.name != DEFAULT:
        items = [(p, it) for p, it in items if p.parent == SAMPLES_DIR]
    cache = ModelCache()
    onnx = Predictor(bundle, "cpu", cache=cache)
    with settings.override(cpu_onnx=False):
        torch_ = Predictor(bundle, "cpu", cache=cache)
    assert (onnx.engine, torch_.engine) == ("onnxruntime", "pytorch")
    photos = [it for _, it in items]
    a, b = onnx.predict_prepared(photos), torch_.predict_prepared(photos)
    worst, gradable = 0.0, 0
    for (path, _), x, y in zip(items, a, b, strict=True):
        assert decision_fields(x) == decision_fields(y), path.name
        assert (x.settings.engine, y.settings.engine) == ("onnxruntime", "pytorch")
        if x.gradable:
            gradable += 1
            worst = max(worst, float(np.abs(np.subtract(x.probs, y.probs)).max()))
    n_min = 230 if bundle.name == DEFAULT else 30
    assert len(items) >= n_min and gradable >= 0.6 * n_min, (len(items), gradable)
    print(f"\n{bundle.name}: {len(items)} photos, {gradable} gradable, max |dp| {worst:.2e}")
    assert worst <= ATOL
