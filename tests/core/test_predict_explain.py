"""Predictor.explain explains the grade predict() decides, and its label says which grade.

Why: with grade cut points (or an operating rule) the decided grade can differ from the argmax
class; a default map of the argmax would show a grade the result does not report.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.cache import ModelCache
from core.manifest import CalibrationSpec
from core.predict import Predictor
from tests.helpers import fundus_like, make_tiny_bundle

# same weights (seed 0), decisions pinned to the ends: E[grade] is always above every cut of
# ALWAYS_4 and below every cut of ALWAYS_0, and the flags agree, so argmax differs from one
ALWAYS_4 = CalibrationSpec(grade_thresholds=(-4, -3, -2, -1), referable_threshold=0.0,
                           vision_threatening_threshold=0.0)
ALWAYS_0 = CalibrationSpec(grade_thresholds=(5, 6, 7, 8), referable_threshold=1.01,
                           vision_threatening_threshold=1.01)


@pytest.fixture
def predictors(tmp_path):
    return {g: Predictor(make_tiny_bundle(tmp_path, f"always{g}", calibration=cal), "cpu",
                         cache=ModelCache())
            for g, cal in ((4, ALWAYS_4), (0, ALWAYS_0))}


def test_default_explains_the_decided_grade_not_the_argmax(predictors):
    for seed in range(3):
        photo = fundus_like(seed)
        argmax = int(np.argmax(predictors[0].predict(photo).probs))
        pred = predictors[0] if argmax != 0 else predictors[4]  # the one that disagrees
        result = pred.predict(photo)
        assert result.grade is not None and result.grade != argmax
        prepared = pred.prepare(photo)
        exp = pred.explain(prepared)
        assert exp.target_class == result.grade
        assert exp.target == f"grade {result.grade} (decided)"
        same = pred.explain(prepared, target=result.grade)
        np.testing.assert_allclose(exp.heatmap, same.heatmap, atol=1e-6)
        top = pred.explain(prepared, target="predicted")
        assert top.target_class == argmax and top.target == f"grade {argmax} (most probable)"


def test_a_given_prediction_is_what_is_explained(predictors):
    pred, other = predictors[4], predictors[0]
    photo = fundus_like(1)
    prepared = pred.prepare(photo)
    result = pred.predict(photo)
    exp = pred.explain(prepared, prediction=result)
    assert exp.target_class == result.grade == 4 and exp.target == "grade 4 (decided)"
    with pytest.raises(ValueError, match="always0"):  # another bundle's result is refused
        pred.explain(prepared, prediction=other.predict(photo))


def test_an_ungradable_photo_says_no_grade_was_decided(predictors):
    pred = predictors[4]
    grey = np.full((256, 256, 3), 128, np.uint8)
    assert pred.predict(grey).grade is None
    prepared = pred.prepare(grey)
    exp = pred.explain(prepared)
    top = pred.explain(prepared, target="predicted")
    assert exp.target_class == top.target_class  # nothing decided: the most probable class
    assert exp.target == f"grade {top.target_class} (most probable; ungradable photo, no grade decided)"
