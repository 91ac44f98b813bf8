"""training.common.metrics checked against scikit-learn and hand-computed cases;
training.common.plots smoke."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from core.grading import decide
from training.common import metrics as M


def _informative(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a realistic imbalance and softmax probs that lean towards the truth."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.45, 0.15, 0.2, 0.1, 0.1])
    logits = rng.normal(size=(n, 5))
    logits[np.arange(n), y] += 1.5
    logits[np.arange(n), np.clip(y + 1, 0, 4)] += 0.7  # ordinal confusion with the next grade
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def _with_conf(cls: int, conf: float) -> list[float]:
    row = [(1 - conf) / 4] * 5
    row[cls] = conf
    return row


def test_evaluate_matches_sklearn():
    y, p = _informative()
    pred = np.array([decide(row).grade for row in p])  # the served grade (core.grading)
    assert (pred != p.argmax(1)).any()  # the flags at 0.5 do move some grades
    r = M.evaluate(y, p)
    assert r["n"] == len(y)
    assert r["class_counts"] == np.bincount(y, minlength=5).tolist()
    assert r["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert r["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert r["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert r["kappa_quadratic"] != pytest.approx(r["kappa"])
    assert r["per_class_recall"] == pytest.approx(
        recall_score(y, pred, labels=range(5), average=None).tolist())
    assert r["macro_auroc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert r["confusion_matrix"] == sk_confusion_matrix(y, pred, labels=range(5)).tolist()
    ref = p[:, 2:].sum(1)
    assert r["referable"]["auroc"] == pytest.approx(roc_auc_score(y >= 2, ref))
    assert r["vision_threatening"]["auroc"] == pytest.approx(roc_auc_score(y >= 3, p[:, 3:].sum(1)))
    assert r["referable"]["threshold"] == 0.5
    json.dumps(r, allow_nan=False)


def test_auroc_handles_ties_like_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    s = np.array([0.2, 0.2, 0.5, 0.5, 0.9, 0.1, 0.5, 0.3])
    assert M.binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_sensitivity_specificity_by_hand():
    # referable = grade >= 2: positives are indices 4..9, negatives 0..3
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    p_ref = np.array([0.1, 0.6, 0.3, 0.2, 0.7, 0.4, 0.9, 0.55, 0.8, 0.5])
    probs = np.zeros((10, 5))
    probs[:, 0] = 1 - p_ref
    probs[:, 2] = p_ref  # so p_referable = probs[:, 2:].sum(1) = p_ref, p_vtdr = 0
    r = M.evaluate(y, probs, referable_threshold=0.5)["referable"]
    # positives >= 0.5: 0.7, 0.9, 0.55, 0.8, 0.5 -> 5 of 6; negatives < 0.5: 0.1, 0.3, 0.2 -> 3 of 4
    assert r["sensitivity"] == pytest.approx(5 / 6)
    assert r["specificity"] == pytest.approx(3 / 4)
    assert (r["n_positive"], r["n_negative"]) == (6, 4)
    r = M.evaluate(y, probs, referable_threshold=0.75)["referable"]
    assert r["sensitivity"] == pytest.approx(2 / 6)
    assert r["specificity"] == pytest.approx(1.0)
    assert r["threshold"] == 0.75


def test_missing_classes_give_none_not_nan():
    y, p = _informative(seed=1)
    keep = y <= 1  # only grades 0 and 1: nothing referable
    r = M.evaluate(y[keep], p[keep])
    assert r["per_class_recall"][2:] == [None, None, None]
    assert r["per_class_recall"][0] is not None
    assert r["referable"]["auroc"] is None and r["referable"]["sensitivity"] is None
    assert r["referable"]["specificity"] is not None
    assert r["macro_auroc"] == pytest.approx(
        np.mean([roc_auc_score(y[keep] == c, p[keep][:, c]) for c in (0, 1)]))
    json.dumps(r, allow_nan=False)

    single = M.evaluate(np.zeros(4, dtype=int), p[:4])
    assert single["macro_auroc"] is None
    assert single["kappa"] is None or single["kappa"] == pytest.approx(
        cohen_kappa_score(np.zeros(4), p[:4].argmax(1)))
    json.dumps(single, allow_nan=False)


def test_evaluate_rejects_bad_inputs():
    y, p = _informative(n=10)
    with pytest.raises(ValueError, match="shape"):
        M.evaluate(y, p[:, :4])
    with pytest.raises(ValueError, match="grades"):
        M.evaluate(y + 5, p)
    with pytest.raises(ValueError, match="NaN"):
        M.evaluate(y, np.full_like(p, np.nan))


def test_ece_known_value():
    # bin (0.8667, 0.9333]: confidences 0.88 and 0.92 (mean 0.9), 7 of 10 correct -> gap 0.2
    # bin (0.4667, 0.5333]: confidence 0.5, 5 of 10 correct -> gap 0
    rows, y = [], []
    for i in range(10):
        rows.append(_with_conf(0, 0.88 if i % 2 else 0.92))
        y.append(0 if i < 7 else 1)
    for i in range(10):
        rows.append(_with_conf(3, 0.5))
        y.append(3 if i < 5 else 4)
    assert M.ece(y, np.array(rows)) == pytest.approx(10 / 20 * 0.2)
    assert M.evaluate(y, np.array(rows))["ece"] == pytest.approx(0.1)
    perfect = [_with_conf(2, 1.0)] * 3
    assert M.ece([2, 2, 2], perfect) == pytest.approx(0.0)


def test_choose_referable_threshold_meets_sensitivity():
    rng = np.random.default_rng(3)
    y = rng.choice(5, size=400)
    p_ref = np.clip(0.25 * (y >= 2) + rng.uniform(0, 0.75, size=400), 0, 1)
    t = M.choose_referable_threshold(y, p_ref, min_sensitivity=0.9)
    pos = p_ref[y >= 2]
    assert (pos >= t).mean() >= 0.9
    assert (pos >= np.nextafter(t, 1)).mean() < 0.9  # any higher threshold misses the target
    assert M.choose_referable_threshold(y, p_ref, min_sensitivity=1.0) == pytest.approx(pos.min())
    t_vt = M.choose_referable_threshold(y, p_ref, min_sensitivity=0.8, min_grade=3)
    assert (p_ref[y >= 3] >= t_vt).mean() >= 0.8


def test_choose_referable_threshold_without_positives_falls_back():
    with pytest.warns(UserWarning, match="grade >= 2"):
        assert M.choose_referable_threshold([0, 1, 0], [0.2, 0.3, 0.9]) == 0.5
    with pytest.raises(ValueError):
        M.choose_referable_threshold([2, 3], [0.5, 0.6], min_sensitivity=0)


def test_ordinal_helpers():
    assert M.expected_grade(np.eye(5)).tolist() == [0, 1, 2, 3, 4]
    assert M.expected_grade(np.array([[0.5, 0, 0, 0, 0.5]]))[0] == pytest.approx(2.0)
    s = np.array([-1.0, 0.49, 0.5, 1.7, 2.5, 3.49, 3.5, 9.0])
    t = (0.5, 1.5, 2.5, 3.5)
    assert M.apply_thresholds(s, t).tolist() == np.digitize(s, t).tolist()
    assert M.apply_thresholds(s, (3.5, 0.5, 2.5, 1.5)).tolist() == np.digitize(s, t).tolist()


def test_tune_qwk_thresholds_fixes_shifted_scores():
    rng = np.random.default_rng(4)
    y = rng.choice(5, size=600, p=[0.4, 0.2, 0.2, 0.1, 0.1])
    scores = 0.6 * y + 1.1 + rng.normal(0, 0.25, size=y.size)  # compressed and shifted upwards
    default = cohen_kappa_score(y, M.apply_thresholds(scores), weights="quadratic")
    tuned_t = M.tune_qwk_thresholds(scores, y)
    tuned = cohen_kappa_score(y, M.apply_thresholds(scores, tuned_t), weights="quadratic")
    assert list(tuned_t) == sorted(tuned_t)
    assert tuned > default + 0.1
    assert tuned > 0.9


def test_tune_qwk_thresholds_never_worsens_good_init():
    rng = np.random.default_rng(5)
    y = rng.choice(5, size=300)
    scores = y + rng.normal(0, 0.3, size=y.size)
    before = cohen_kappa_score(y, M.apply_thresholds(scores), weights="quadratic")
    t = M.tune_qwk_thresholds(scores, y)
    after = cohen_kappa_score(y, M.apply_thresholds(scores, t), weights="quadratic")
    assert after >= before
    assert np.allclose(t, (0.5, 1.5, 2.5, 3.5), atol=0.5)


def test_tuned_cut_points_keep_every_grade_band():
    # ~80 calibration photos where grade 1 scores like grade 0: unconstrained, kappa merges
    # two cut points and grade 1 can never be served (what the shipped eyepacs bundle did).
    rng = np.random.default_rng(4)
    y = rng.choice(5, size=80, p=[0.7, 0.08, 0.14, 0.05, 0.03])
    scores = np.where(y <= 1, 0.8, 1.0 + 0.5 * y) + rng.normal(0, 0.4, size=y.size)
    merged = M.tune_qwk_thresholds(scores, y, min_band=0.0)
    assert min(np.diff(merged)) < 1e-9
    kept = M.tune_qwk_thresholds(scores, y)
    assert min(np.diff(kept)) >= M.MIN_ORDINAL_BAND - 1e-12
    assert np.bincount(M.apply_thresholds(scores, kept), minlength=5)[1] > 0


def test_tune_qwk_thresholds_rejects_init_closer_than_the_band():
    with pytest.raises(ValueError, match="min_band"):
        M.tune_qwk_thresholds([0.1, 2.0], [0, 2], init=(0.5, 0.6, 2.5, 3.5))


# ----------------------------------------------------------------------------- plots
def _png_ok(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_plots_write_pngs(tmp_path):
    from training.common import plots

    y, p = _informative(n=120)
    cm = M.evaluate(y, p)["confusion_matrix"]
    assert _png_ok(plots.confusion_matrix_png(cm, tmp_path / "sub" / "cm.png"))
    assert _png_ok(plots.reliability_png(y, p, tmp_path / "rel.png"))
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_kappa": 0.1 * e,
                "lr": 1e-3, "note": "text"} for e in range(1, 6)]
    history[2].pop("val_kappa")  # a missing value must not break the figure
    assert _png_ok(plots.training_curves_png(history, tmp_path / "curves.png"))
    assert _png_ok(plots.training_curves_png([], tmp_path / "empty.png"))


def test_evaluate_scores_the_grades_an_ordinal_bundle_serves():
    """With grade_thresholds, kappa and the confusion matrix use E[grade] and the cut points."""
    probs = np.array([[0.45, 0.0, 0.0, 0.0, 0.55], [0.6, 0.4, 0, 0, 0], [0, 0, 0.5, 0.5, 0]])
    y = [2, 0, 3]
    plain = M.evaluate(y, probs)
    ordinal = M.evaluate(y, probs, grade_thresholds=(0.5, 1.5, 2.5, 3.5))
    assert np.argmax(probs, 1).tolist() == [4, 0, 2]
    assert M.apply_thresholds(M.expected_grade(probs), (0.5, 1.5, 2.5, 3.5)).tolist() == [2, 0, 3]
    # served grades (core.grading.decide): row 0 has 55% on PDR, so it is vision-threatening at
    # the 0.5 operating point and its cut-point grade 2 moves into the vtDR band (grade 3)
    # (argmax inside that band: 4); row 2 crosses it too, so both rules give grade 3 there
    assert ordinal["accuracy"] == pytest.approx(2 / 3) and plain["accuracy"] == pytest.approx(2 / 3)
    assert np.array(ordinal["confusion_matrix"])[2, 3] == 1
    assert np.array(plain["confusion_matrix"])[2, 4] == 1
    assert np.trace(np.array(ordinal["confusion_matrix"])) == 2


def _noisy_calibration_split(seed: int = 1, n: int = 80):
    """Probabilities of a weak model that leans towards grade 0, as on the real photos."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.7, 0.06, 0.13, 0.05, 0.06])
    alpha = np.ones((n, 5))
    alpha[np.arange(n), y] += 1.5
    alpha[:, 0] += 2
    return np.array([rng.dirichlet(a) for a in alpha]), y


def _served(probs, cuts, flags):
    """The grades a bundle with these cut points serves: core.grading.decide itself."""
    from core.grading import Thresholds, decide
    rule = Thresholds(flags.referable, flags.vision_threatening, tuple(float(c) for c in cuts))
    return np.array([decide(p, rule).grade for p in probs])


def test_cut_points_tuned_inside_the_flag_bands_serve_mild_npdr():
    from core.grading import Thresholds
    from training.trainer.finalize import served_cut_points
    probs, y = _noisy_calibration_split()
    flags = Thresholds(referable=0.2, vision_threatening=0.15)
    scores = M.expected_grade(probs)
    free = M.tune_qwk_thresholds(scores, y)
    served = served_cut_points(probs, y, flags)
    graded_free = _served(probs, free, flags)
    graded_served = _served(probs, served, flags)
    # the scenario of eyepacs-lite0 before session 7: tuned without the bands, the 0/1 cut is
    # out of reach of every unreferred photo (if this fails, the fixture no longer shows it)
    assert 1 not in graded_free, "fixture no longer reproduces the empty grade-1 band"
    # the fix: tuned on the grades as served (fails with served_cut_points replaced by the
    # band-free tuning, checked by mutation)
    assert 1 in graded_served, "band-aware cut points serve no mild NPDR"
    assert (cohen_kappa_score(y, graded_served, weights="quadratic")
            > cohen_kappa_score(y, graded_free, weights="quadratic"))
    assert min(np.diff(served)) >= M.MIN_ORDINAL_BAND


def test_the_band_test_fails_when_the_fix_or_its_fixture_is_undone(monkeypatch):
    """Both assertions of the test above can fail: with served_cut_points replaced by the
    band-free tuning (the fix undone), and with the band-free tuner made band-aware (the
    fixture no longer shows the empty grade-1 band)."""
    from core.grading import Thresholds
    from training.trainer import finalize

    served = finalize.served_cut_points
    monkeypatch.setattr(finalize, "served_cut_points", lambda probs, y, flags:
                        M.tune_qwk_thresholds(M.expected_grade(probs), y))
    with pytest.raises(AssertionError, match="serve no mild NPDR"):
        test_cut_points_tuned_inside_the_flag_bands_serve_mild_npdr()
    monkeypatch.setattr(finalize, "served_cut_points", served)
    probs, y = _noisy_calibration_split()
    cuts = served(probs, y, Thresholds(referable=0.2, vision_threatening=0.15))
    monkeypatch.setattr(M, "tune_qwk_thresholds", lambda scores, labels, **kw: cuts)
    with pytest.raises(AssertionError, match="no longer reproduces the empty grade-1 band"):
        test_cut_points_tuned_inside_the_flag_bands_serve_mild_npdr()


def test_bands_must_match_the_labels():
    y = np.array([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="one .lowest, highest. grade per image"):
        M.tune_qwk_thresholds(y.astype(float), y, bands=(np.zeros(4), np.ones(4)))


def test_a_bundle_fitted_with_vt_grade_by_probability_reports_the_kappa_it_serves():
    """calibrate_and_evaluate with optim.vt_grade_by_probability: the bundle carries the rule,
    its kappa is that of the grades decide() serves with it, and no vtDR photo is served the
    less probable of severe NPDR and PDR."""
    from dataclasses import replace

    from training.trainer.calibration import apply_temperature
    from training.trainer.config import TrainConfig
    from training.trainer.finalize import calibrate_and_evaluate

    probs, y = _noisy_calibration_split()
    logits = np.log(np.clip(probs, 1e-6, None))
    base = TrainConfig()
    cfg = replace(base, optim=replace(base.optim, ordinal=True, vt_grade_by_probability=True))
    calibration, metrics = calibrate_and_evaluate(cfg, logits, y)
    assert calibration.vt_grade_by_probability
    served_probs = apply_temperature(logits, calibration.temperature)
    decisions = [decide(p, calibration.thresholds()) for p in served_probs]
    served = np.array([d.grade for d in decisions])
    assert metrics["kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(y, served, weights="quadratic"))
    vt = [(d, p) for d, p in zip(decisions, served_probs, strict=True) if d.vision_threatening]
    assert vt and all(p[d.grade] >= p[7 - d.grade] for d, p in vt)
