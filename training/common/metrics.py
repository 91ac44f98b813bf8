"""Validation metrics for the trainers: numpy in, plain JSON-serialisable Python out.

Everything is computed here with numpy (not scikit-learn) so the tests can check it against
scikit-learn independently, and so every undefined value is `None` rather than NaN: run
summaries are written with `json.dumps(..., allow_nan=False)` and shown on model cards.
Screening decisions use composite probabilities (p_referable = P(grade >= 2), p_vtdr =
P(grade >= 3)) at an operating threshold chosen for sensitivity, never argmax alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from core.grading import REFERABLE_MIN_GRADE, VISION_THREATENING_MIN_GRADE, Thresholds, decide

N_GRADES = 5
ECE_BINS = 15
DEFAULT_THRESHOLD = 0.5
DEFAULT_ORDINAL_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
# Narrowest band of E[grade] a tuned grade keeps. Kappa on a calibration split of ~80 photos can
# prefer merging two cut points, and a bundle whose grade-1 band is empty never serves mild NPDR
# (a different recall interval from No DR), whatever the photo shows.
MIN_ORDINAL_BAND = 0.25


# ----------------------------------------------------------------------------- input checks
def _labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true).reshape(-1)
    if y.size and (not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= N_GRADES):
        raise ValueError(f"y_true must hold integer grades 0..{N_GRADES - 1}; "
                         "map dataset labels to ICDR grades before evaluating")
    return y.astype(np.int64)


def _probs(probs: Any, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (n, N_GRADES):
        raise ValueError(f"probs must have shape ({n}, {N_GRADES}), got {p.shape}; "
                         "pass softmax probabilities, one row per label")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN/inf; check the model outputs (e.g. AMP overflow)")
    return p


def _opt(x: float) -> float | None:
    """NaN/inf -> None so the result stays valid JSON."""
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------- building blocks
def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int = N_GRADES) -> np.ndarray:
    """Rows = true grade, columns = predicted grade; every grade always present."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def cohen_kappa(y_true: Any, y_pred: Any, *, quadratic: bool = False) -> float | None:
    """Cohen's kappa (plain or quadratic-weighted); None when chance agreement is total."""
    cm = confusion_matrix(y_true, y_pred).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return None
    idx = np.arange(N_GRADES)
    if quadratic:
        w = (idx[:, None] - idx[None, :]) ** 2 / (N_GRADES - 1) ** 2
    else:
        w = (idx[:, None] != idx[None, :]).astype(np.float64)
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    denom = float((w * expected).sum())
    return None if denom == 0 else float(1.0 - (w * cm).sum() / denom)


def binary_auroc(y_bin: Any, scores: Any) -> float | None:
    """Mann-Whitney AUROC with mid-ranks for ties; None when one class is absent."""
    y = np.asarray(y_bin).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _bin_stats(y_true: Any, probs: Any, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin (lo, hi] of top-class confidence: count, mean confidence, accuracy."""
    y = _labels(y_true)
    p = _probs(probs, len(y))
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    safe = np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / safe
    accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / safe
    return count, mean_conf, accuracy


def reliability_bins(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> dict[str, list]:
    """JSON-ready reliability table (None for empty bins), shared with the reliability plot
    so the figure and the reported ECE come from the same numbers."""
    count, mean_conf, accuracy = _bin_stats(y_true, probs, n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": [float(c) if k else None for c, k in zip(mean_conf, count, strict=True)],
        "accuracy": [float(a) if k else None for a, k in zip(accuracy, count, strict=True)],
        "count": count.tolist(),
    }


def ece(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of the top-class confidence (Guo et al. 2017)."""
    count, mean_conf, accuracy = _bin_stats(y_true, probs, n_bins)
    n = count.sum()
    return float((count * np.abs(accuracy - mean_conf)).sum() / n) if n else None


# ----------------------------------------------------------------------------- binary screening
def binary_screening(y_true: Any, p_positive: Any, min_grade: int,
                     threshold: float | None = None) -> dict[str, Any]:
    """AUROC, sensitivity and specificity of "grade >= min_grade" at `threshold` (p >= t)."""
    y = _labels(y_true) >= min_grade
    s = np.asarray(p_positive, dtype=np.float64).reshape(-1)
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    pred = s >= t
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    return {
        "auroc": binary_auroc(y, s),
        "sensitivity": tp / n_pos if n_pos else None,
        "specificity": tn / n_neg if n_neg else None,
        "threshold": t,
        "n_positive": n_pos,
        "n_negative": n_neg,
    }


def choose_referable_threshold(y_true: Any, p_referable: Any, *, min_sensitivity: float = 0.9,
                               min_grade: int = REFERABLE_MIN_GRADE) -> float:
    """Highest threshold whose validation sensitivity is >= min_sensitivity (p >= t is positive).

    Screening favours sensitivity: a missed referable eye costs more than a false referral, so
    the operating point is the most specific one that still meets the sensitivity target.
    `y_true` holds grades 0..4; pass min_grade=3 for the vision-threatening threshold. Without
    positive cases sensitivity is undefined and the 0.5 default is returned (with a warning).
    """
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError("min_sensitivity must lie in (0, 1], e.g. 0.9")
    y = _labels(y_true) >= min_grade
    s = np.asarray(p_referable, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"p_referable has {s.size} values for {y.size} labels; pass one per image")
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        warnings.warn(f"no validation cases with grade >= {min_grade}: cannot set the threshold "
                      f"by sensitivity, using {DEFAULT_THRESHOLD}", stacklevel=2)
        return DEFAULT_THRESHOLD
    k = max(1, math.ceil(min_sensitivity * pos.size - 1e-9))  # positives that must be caught
    return float(pos[k - 1])


# ----------------------------------------------------------------------------- evaluate
def macro_auroc(y_true: Any, probs: Any) -> float | None:
    """One-vs-rest AUROC averaged over the grades present; None with fewer than two grades."""
    y = _labels(y_true)
    p = _probs(probs, len(y))
    present = np.unique(y)
    if present.size < 2:
        return None
    return float(np.mean([binary_auroc(y == c, p[:, c]) for c in present]))


def evaluate(y_true: Any, probs: Any, *, referable_threshold: float | None = None,
             vision_threatening_threshold: float | None = None,
             grade_thresholds: Sequence[float] | None = None,
             vt_grade_by_probability: bool = False) -> dict[str, Any]:
    """All validation metrics of a 5-grade classifier, JSON-ready (no NaN; None = undefined).

    Thresholds default to 0.5; trainers pass the ones chosen by `choose_referable_threshold`
    so that the reported sensitivity/specificity is that of the bundle's operating point, and
    an ordinal bundle's `grade_thresholds` so that kappa is that of the served grades.
    """
    y = _labels(y_true)
    p = _probs(probs, len(y))
    if y.size == 0:
        raise ValueError("evaluate needs at least one labelled image")
    # the served grade: core.grading.decide (flags at the operating thresholds, then the grade
    # they allow; ordinal bundles by their cut points inside that band)
    rule = Thresholds(DEFAULT_THRESHOLD if referable_threshold is None else referable_threshold,
                      DEFAULT_THRESHOLD if vision_threatening_threshold is None
                      else vision_threatening_threshold,
                      None if grade_thresholds is None else tuple(sorted(grade_thresholds)),
                      vt_grade_by_probability=vt_grade_by_probability)
    pred = np.array([decide(row, rule).grade for row in p], dtype=np.int64)
    cm = confusion_matrix(y, pred)
    counts = cm.sum(1)
    recall = [float(cm[c, c] / counts[c]) if counts[c] else None for c in range(N_GRADES)]
    return {
        "n": int(y.size),
        "class_counts": counts.tolist(),
        "accuracy": float((pred == y).mean()),
        "kappa_quadratic": cohen_kappa(y, pred, quadratic=True),
        "kappa": cohen_kappa(y, pred),
        "per_class_recall": recall,
        "macro_auroc": macro_auroc(y, p),
        "referable": binary_screening(y, p[:, REFERABLE_MIN_GRADE:].sum(1),
                                      REFERABLE_MIN_GRADE, referable_threshold),
        "vision_threatening": binary_screening(y, p[:, VISION_THREATENING_MIN_GRADE:].sum(1),
                                               VISION_THREATENING_MIN_GRADE,
                                               vision_threatening_threshold),
        "ece": ece(y, p),
        "confusion_matrix": cm.tolist(),
    }


# ----------------------------------------------------------------------------- ordinal option
def expected_grade(probs: Any) -> np.ndarray:
    """Probability-weighted grade E[g] in [0, 4]: an ordinal score for threshold tuning."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_GRADES:
        raise ValueError(f"probs must have shape (N, {N_GRADES}), got {p.shape}")
    return p @ np.arange(N_GRADES, dtype=np.float64)


def apply_thresholds(scores: Any, thresholds: Sequence[float] = DEFAULT_ORDINAL_THRESHOLDS
                     ) -> np.ndarray:
    """Continuous scores (regression output or E[g]) -> grades: grade = #thresholds <= score."""
    t = np.sort(np.asarray(thresholds, dtype=np.float64))
    if t.shape != (N_GRADES - 1,):
        raise ValueError(f"need {N_GRADES - 1} thresholds, got {t.size}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return (s[:, None] >= t[None, :]).sum(1).astype(np.int64)


def _qwk_or_floor(y: np.ndarray, scores: np.ndarray, t: Sequence[float],
                  clip: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    graded = apply_thresholds(scores, t)
    if clip is not None:
        graded = np.clip(graded, clip[0], clip[1])
    k = cohen_kappa(y, graded, quadratic=True)
    return -math.inf if k is None else k


def _candidates(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    """Midpoints between distinct scores (thinned to quantiles): QWK only changes there."""
    u = np.unique(scores)
    if u.size > max_candidates + 1:
        u = np.unique(np.quantile(scores, np.linspace(0, 1, max_candidates + 1)))
    return (u[:-1] + u[1:]) / 2 if u.size > 1 else u


def tune_qwk_thresholds(scores: Any, y_true: Any,
                        init: Sequence[float] = DEFAULT_ORDINAL_THRESHOLDS, *,
                        max_candidates: int = 256, max_passes: int = 10,
                        min_band: float = MIN_ORDINAL_BAND,
                        bands: tuple[Any, Any] | None = None) -> tuple[float, ...]:
    """Cut points maximising quadratic kappa on validation, by coordinate search.

    QWK is piecewise constant in the thresholds, so gradient-free simplex methods stall on its
    plateaus; trying every midpoint between neighbouring scores, one threshold at a time and
    within its neighbours' bounds, keeps the thresholds sorted and only ever improves kappa.
    Neighbouring cut points stay at least `min_band` apart, so every grade keeps a band.
    `bands` (lowest, highest allowed grade per image: the flags' band, `core.grading.grade_band`)
    scores kappa on the grades as served, clipped into those bands.
    """
    y = _labels(y_true)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels; pass one score per image")
    clip = None if bands is None else tuple(np.asarray(b, dtype=np.int64).reshape(-1)
                                            for b in bands)
    if clip is not None and any(b.shape != y.shape for b in clip):
        raise ValueError("bands need one (lowest, highest) grade per image")
    t = [float(v) for v in np.sort(np.asarray(init, dtype=np.float64))]
    if len(t) != N_GRADES - 1:
        raise ValueError(f"init needs {N_GRADES - 1} thresholds, got {len(t)}")
    if min(np.diff(t)) < min_band:
        raise ValueError(f"init cut points {t} are closer than min_band={min_band}")
    cand = _candidates(s, max_candidates)
    best = _qwk_or_floor(y, s, t, clip)
    for _ in range(max_passes):
        improved = False
        for i in range(len(t)):
            lo = t[i - 1] + min_band if i > 0 else -math.inf
            hi = t[i + 1] - min_band if i < len(t) - 1 else math.inf
            for c in cand[(cand >= lo) & (cand <= hi)]:
                trial = t[:i] + [float(c)] + t[i + 1:]
                k = _qwk_or_floor(y, s, trial, clip)
                if k > best + 1e-12:
                    best, t, improved = k, trial, True
        if not improved:
            break
    return tuple(t)


def metric_value(metrics: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    """A number inside a metrics dict by its key path (None where a key or number is missing)."""
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return float(node) if isinstance(node, (int, float)) else None
