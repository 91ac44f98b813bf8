"""training.evaluation.learning_curve: the slope per doubling of training photos, its paired interval, and
the extrapolated photo count, on cross-validation folders written here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from training.evaluation import learning_curve
from training.evaluation.learning_curve import fit_log2, photos_to_reach

FIELDS = ["id", "patient", "grade", "fold", "p0", "p1", "p2", "p3", "p4", "referable_threshold",
          "vision_threatening_threshold", "grade_cuts", "vt_grade_by_probability"]


def _cv_dir(root: Path, name: str, skill: float, n_patients: int = 120) -> Path:
    """A two-fold crossval folder whose p(referable) separates referable eyes by `skill`."""
    rng = np.random.default_rng(0)  # the same photos and noise for every skill
    grades = rng.choice(5, size=(n_patients, 2), p=[0.6, 0.1, 0.15, 0.07, 0.08])
    noise = rng.normal(size=(n_patients, 2))
    out = root / name
    for fold in range(2):
        folder = out / f"fold{fold}"
        folder.mkdir(parents=True)
        with (folder / "test_predictions.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            for p in range(fold, n_patients, 2):
                for e, eye in enumerate(("left", "right")):
                    p_ref = 1 / (1 + np.exp(-(skill * (grades[p, e] >= 2) + noise[p, e] - 1)))
                    writer.writerow({"id": f"{p}_{eye}", "patient": p, "grade": grades[p, e],
                                     "fold": fold, "p0": 1 - p_ref, "p1": 0, "p2": p_ref,
                                     "p3": 0, "p4": 0, "referable_threshold": 0.5,
                                     "vision_threatening_threshold": 0.9, "grade_cuts": "",
                                     "vt_grade_by_probability": 0})
    return out


@pytest.fixture
def photos_per_dir(monkeypatch):
    """Training photos per folder as a fold config would give them (no real data needed)."""
    table: dict[str, tuple[float, float]] = {}
    monkeypatch.setattr(learning_curve, "training_photos", lambda d: table[d.name])
    return table


def test_the_fitted_line_and_its_extrapolation_are_exact_on_a_line():
    photos = np.array([50.0, 100.0, 200.0])
    intercept, slope = fit_log2(photos, 0.5 + 0.05 * np.log2(photos))
    assert intercept == pytest.approx(0.5) and slope == pytest.approx(0.05)
    assert photos_to_reach(0.85, 0.5, 0.05) == pytest.approx(2 ** 7)
    assert photos_to_reach(0.85, 0.8, 0.0) == float("inf")


def test_a_rising_curve_gets_a_positive_paired_slope_and_a_plot(tmp_path, photos_per_dir):
    dirs = [_cv_dir(tmp_path, f"f{k}", skill) for k, skill in enumerate((0.5, 1.0, 2.0))]
    photos_per_dir.update({"f0": (0.25, 50.0), "f1": (0.5, 100.0), "f2": (1.0, 200.0)})
    result = learning_curve.curve(learning_curve.read_points(dirs[::-1]), 0.99, reps=200)
    values = [p["value"] for p in result["points"]]
    assert [p["train_photos"] for p in result["points"]] == [50.0, 100.0, 200.0]
    assert values == sorted(values) and values[0] < values[-1]
    assert 0 < result["slope_ci95"][0] <= result["slope_per_doubling"] <= result["slope_ci95"][1]
    assert 200 < result["photos_to_target"] < float("inf")
    assert learning_curve.main([str(d) for d in dirs] + [
        "--bootstrap", "100", "--plot", str(tmp_path / "curve.png"),
        "--out", str(tmp_path / "curve.md")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    assert "per doubling" in (tmp_path / "curve.md").read_text(encoding="utf-8")


def test_a_flat_curve_never_reaches_the_target(tmp_path, photos_per_dir):
    dirs = [_cv_dir(tmp_path, f"f{k}", 1.0) for k in range(2)]
    photos_per_dir.update({"f0": (0.5, 100.0), "f1": (1.0, 200.0)})
    result = learning_curve.curve(learning_curve.read_points(dirs), 0.85, reps=50)
    assert result["slope_per_doubling"] == pytest.approx(0.0, abs=1e-12)
    assert "never" in learning_curve.report(result)


def test_folders_of_different_photos_are_refused(tmp_path, photos_per_dir):
    dirs = [_cv_dir(tmp_path, "a", 1.0), _cv_dir(tmp_path, "b", 1.0, n_patients=100)]
    photos_per_dir.update({"a": (0.5, 100.0), "b": (1.0, 200.0)})
    with pytest.raises(SystemExit, match="different photos"):
        learning_curve.curve(learning_curve.read_points(dirs), 0.85, reps=10)
