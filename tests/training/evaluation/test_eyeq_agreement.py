"""The quality gate against EyeQ's human labels on the real EyePACS photos of ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluation.eyeq_agreement import agreement_table, main, rate_folder, silent

EYEPACS = Path(__file__).resolve().parents[3].parent / "shared" / "realdata" / "eyepacs"
pytestmark = pytest.mark.skipif(not (EYEPACS / "eyeq_quality.csv").is_file(),
                                reason="../shared/realdata not beside the checkout")


@pytest.fixture(scope="module")
def rated():
    return rate_folder(EYEPACS)


def test_every_eyeq_good_photo_is_good(rated):
    good = [r for r in rated if r.eyeq == "good"]
    assert len(good) == 47
    assert [r.image for r in good if r.ours != "good"] == []


def test_eyeq_reject_photos_are_rarely_graded_without_a_warning(rated):
    rejects = [r for r in rated if r.eyeq == "reject"]
    assert len(rejects) == 21
    # measured 3 of 21 (1008_left, 86_left, 159_left: hazy or clipped, sharp by our metrics);
    # the thresholds were set on these same photos, so this guards against regressions only
    assert len(silent(rated)) <= 3
    assert sum(r.ours == "reject" for r in rejects) >= 10


def test_table_and_command(rated, capsys):
    table = agreement_table(rated)
    assert "| good | 47 | 0 | 0 | 47 |" in table
    assert main([str(EYEPACS)]) == 0
    assert "EyeQ-reject photos graded without a warning" in capsys.readouterr().out


def test_no_eyeq_reject_photo_is_graded_silently_by_the_default_model(rated):
    """Issue 11, item 4, as served: each EyeQ-reject photo is ungradable or carries a review
    flag. These photos are in eyepacs-lite0's training data, so this checks the served card's
    wiring on them, not how the model fares on unseen poor photos."""
    from core.bundle import load_bundle
    from core.predict import Predictor

    bundle_dir = Path(__file__).resolve().parents[3] / "models" / "eyepacs-lite0"
    if not bundle_dir.is_dir():
        pytest.skip("models/eyepacs-lite0 is not installed")
    predictor = Predictor(load_bundle(bundle_dir), "cpu")
    rejects = [r.image for r in rated if r.eyeq == "reject"]
    silent_cards = []
    for image in rejects:
        pred = predictor.predict(EYEPACS / "train" / f"{image}.jpeg")
        if pred.gradable and not pred.review_reasons:
            silent_cards.append(image)
    assert len(rejects) == 21 and silent_cards == []
