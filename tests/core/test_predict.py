"""Predictor: batching, determinism, calibration, ungradable photos, thresholds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.cache import ModelCache
from core.manifest import CalibrationSpec
from core.predict import Predictor
from tests.helpers import fundus_like, make_tiny_bundle


@pytest.fixture
def bundle(tmp_path):
    return make_tiny_bundle(tmp_path)


def _predictor(bundle, **kw):
    return Predictor(bundle, device="cpu", cache=ModelCache(), **kw)


def test_batch_equals_one_by_one_and_repeats(bundle):
    pred = _predictor(bundle, max_batch=3)
    images = [fundus_like(s) for s in range(5)]
    batch = pred.predict_batch(images)
    single = [pred.predict(im) for im in images]
    again = pred.predict_batch(images)
    for a, b, c in zip(batch, single, again, strict=True):
        assert a.gradable, a.quality.reasons
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
        assert a.probs == c.probs
        assert a.grade == b.grade


def test_probabilities_sum_to_one_and_flags_follow_thresholds(bundle):
    result = _predictor(bundle).predict(fundus_like(1))
    assert sum(result.probs) == pytest.approx(1.0, abs=1e-6)
    assert result.p_referable == pytest.approx(sum(result.probs[2:]))
    assert result.referable == (result.p_referable >= 0.5)
    assert result.confidence == max(result.probs)
    assert result.settings.referable_threshold == 0.5
    assert result.model == "tiny" and result.version == "0.1"


def test_temperature_changes_confidence_not_argmax(tmp_path):
    cold = make_tiny_bundle(tmp_path, "cold")
    hot = make_tiny_bundle(tmp_path, "hot", calibration=CalibrationSpec(temperature=4.0))
    image = fundus_like(2)
    a, b = _predictor(cold).predict(image), _predictor(hot).predict(image)
    assert a.grade == b.grade
    assert b.confidence < a.confidence
    assert max(b.probs) - min(b.probs) < max(a.probs) - min(a.probs)


def test_referable_threshold_is_the_operating_point(tmp_path):
    strict = make_tiny_bundle(tmp_path, "low", calibration=CalibrationSpec(referable_threshold=0.0))
    lax = make_tiny_bundle(tmp_path, "high", calibration=CalibrationSpec(referable_threshold=1.01))
    image = fundus_like(3)
    assert _predictor(strict).predict(image).referable is True
    assert _predictor(lax).predict(image).referable is False


@pytest.mark.parametrize("picture", ["grey", "noise"])
def test_rejected_photo_gets_no_grade(bundle, picture):
    rng = np.random.default_rng(0)
    image = (np.full((256, 256, 3), 128, np.uint8) if picture == "grey"
             else rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    result = _predictor(bundle).predict(image)
    assert result.quality.level == "reject"
    assert result.grade is None and result.probs is None and result.referable is None
    assert result.urgency.name == "UNGRADABLE"


def test_tta_runs_and_stays_a_distribution(bundle):
    result = _predictor(bundle, tta=True).predict(fundus_like(4))
    assert sum(result.probs) == pytest.approx(1.0, abs=1e-6)
    assert result.settings.tta is True


def test_bundle_calibrated_under_flip_tta_is_served_so(tmp_path):
    import torch

    flipped = make_tiny_bundle(tmp_path, "flip", calibration=CalibrationSpec(flip_tta=True))
    plain = make_tiny_bundle(tmp_path, "plain")
    assert _predictor(flipped).tta is True and _predictor(plain).tta is False
    assert _predictor(flipped, tta=False).tta is False  # an explicit choice still wins
    x = torch.randn(2, 3, 64, 64)
    off = _predictor(flipped, tta=False)
    mirrored = (off.logits(x) + off.logits(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(_predictor(flipped).logits(x), mirrored, rtol=0, atol=1e-5)
    assert not torch.allclose(off.logits(x), mirrored, atol=1e-5)  # the mirror changes logits


def test_prediction_is_frozen(bundle):
    result = _predictor(bundle).predict(fundus_like(5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.grade = 4


def test_explain_through_predictor_for_cnn_and_lora(tmp_path):
    from tests.helpers import TINY_VIT, make_lora_bundles

    cnn = make_tiny_bundle(tmp_path, "cnn")
    base = make_tiny_bundle(tmp_path, "vit", arch=TINY_VIT)
    lora = make_lora_bundles(tmp_path, base, ["lora"])[0]
    for bundle in (cnn, base, lora):
        pred = _predictor(bundle)
        prepared = pred.prepare(fundus_like(6))
        exp = pred.explain(prepared)
        assert exp.heatmap.shape == (64, 64)
        assert 0.0 <= exp.heatmap.min() and exp.heatmap.max() <= 1.0
        assert exp.layer.endswith(bundle.manifest.explanation.target_layer)


def test_encoder_bundle_is_not_a_grader(tmp_path):
    from core.errors import BundleError

    bundle = make_tiny_bundle(tmp_path, "enc", outputs=("features",))
    with pytest.raises(BundleError, match="encoder"):
        _predictor(bundle)


def test_ordinal_bundle_grades_by_its_cut_points(tmp_path):
    """grade_thresholds in the manifest decide the grade from E[grade], not argmax."""
    from core.bundle import load_bundle
    from core.grading import decide_grade

    plain = make_tiny_bundle(tmp_path, "plain")
    cuts = (0.5, 1.5, 2.5, 3.5)
    ordinal = make_tiny_bundle(tmp_path, "ordinal", calibration=CalibrationSpec(grade_thresholds=cuts))
    assert load_bundle(ordinal.path).manifest.calibration.grade_thresholds == cuts  # round trip
    always4 = make_tiny_bundle(tmp_path, "always4", calibration=CalibrationSpec(
        grade_thresholds=(-4, -3, -2, -1), referable_threshold=0.0,
        vision_threatening_threshold=0.0))
    photos = [fundus_like(s) for s in range(4)]
    a = Predictor(plain, "cpu", cache=ModelCache()).predict_batch(photos)
    b = Predictor(ordinal, "cpu", cache=ModelCache()).predict_batch(photos)
    c = Predictor(always4, "cpu", cache=ModelCache()).predict_batch(photos)
    for x, y, z in zip(a, b, c, strict=True):
        assert x.probs == y.probs == z.probs  # same weights: only the decision differs
        # flags at the operating thresholds first, then the grade they allow (core.grading)
        band = [g for g in range(5) if (g >= 2) == x.referable and (g >= 3) == x.vision_threatening]
        assert x.grade == max(band, key=lambda g: x.probs[g])
        expected = sum(g * p for g, p in enumerate(y.probs))
        cut_grade = sum(expected >= t for t in cuts)
        assert cut_grade == decide_grade(y.probs, cuts)
        assert y.grade == min(max(cut_grade, band[0]), band[-1])
        assert z.grade == 4 and z.confidence == pytest.approx(z.probs[4])
    with pytest.raises(ValueError, match="sorted cut points"):
        decide_grade((0.2,) * 5, (1.0, 0.5, 2.0, 3.0))
