"""Patient-disjoint folds, a calibration split apart from the selection split, and the
cross-validation table with bootstrap intervals."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from core.grading import REFERABLE_MIN_GRADE
from tests.training.conftest import tiny_overrides
from training.evaluation import bootstrap, crossval
from training.trainer.config import DataConfig, load_config
from training.trainer.datasets import (
    LabelledImage,
    assign_folds,
    load_records,
    split_cv_fold,
    three_way_split,
)

EYEPACS = Path(__file__).resolve().parents[3].parent / "shared" / "realdata" / "eyepacs"


def _records(n_patients: int, seed: int = 0) -> list[LabelledImage]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        for eye in ("left", "right"):
            out.append(LabelledImage(f"{p}_{eye}", Path(f"{p}_{eye}.jpeg"),
                                     int(rng.choice(5, p=[0.6, 0.1, 0.15, 0.07, 0.08])), str(p)))
    return out


def test_folds_keep_a_patients_eyes_together_and_spread_each_grade():
    records = _records(200)
    folds = assign_folds(records, 5, seed=0)
    assert set(folds.values()) == set(range(5))
    worst = defaultdict(int)
    for r in records:
        worst[r.patient] = max(worst[r.patient], r.grade)
    for grade in range(5):  # stratified: each fold holds a fifth of each worst grade (+-1)
        counts = np.bincount([folds[p] for p, g in worst.items() if g == grade], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert assign_folds(records, 5, seed=0) == folds  # deterministic
    assert assign_folds(records, 5, seed=1) != folds


@pytest.mark.skipif(not EYEPACS.is_dir(), reason="../shared/realdata not beside the checkout")
def test_eyepacs_preset_reads_kaggles_layout_and_splits_by_patient():
    records, summary = load_records(DataConfig(preset="eyepacs",
                                               csv=str(EYEPACS / "trainLabels.csv")))
    assert summary["used"] == summary["rows"] == 1021
    assert np.bincount([r.grade for r in records]).tolist() == [767, 62, 145, 18, 29]
    by_id = {r.id: r for r in records}
    assert by_id["10_left"].patient == by_id["10_right"].patient == "10"
    tested = []
    for k in range(5):
        rest, test = split_cv_fold(records, 5, k, seed=0)
        assert not {r.patient for r in rest} & {r.patient for r in test}
        ids = {r.id for r in test}
        assert ("10_left" in ids) == ("10_right" in ids)
        tested += ids
    assert sorted(tested) == sorted(by_id)  # every photo tested exactly once
    train, selection, calibration = three_way_split(records, 0.15, 0.2, seed=0)
    parts = [{r.patient for r in part} for part in (train, selection, calibration)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(train) + len(selection) + len(calibration) == 1021
    assert all(any(r.grade >= REFERABLE_MIN_GRADE for r in part)
               for part in (selection, calibration))


def test_train_fraction_shrinks_only_the_training_patients():
    """A learning-curve point trains on fewer patients; the test fold, selection and
    calibration splits must be the very same photos as at the full fraction."""
    from training.trainer.config import ConfigError
    from training.trainer.splits import make_splits

    records = _records(120)

    def splits(fraction: float):
        cfg = load_config(None, ["data.cv_fold=1", "data.calibration_fraction=0.2",
                                 f"data.train_fraction={fraction}"])
        return make_splits(cfg, records)

    full, half = splits(1.0), splits(0.5)
    for part in ("test", "selection", "calibration"):
        assert [r.id for r in getattr(half, part)] == [r.id for r in getattr(full, part)]
    kept = {r.id for r in half.train}
    assert kept < {r.id for r in full.train}
    assert abs(len({r.patient for r in half.train}) - len({r.patient for r in full.train}) / 2) <= 5
    assert all((f"{r.patient}_left" in kept) == (f"{r.patient}_right" in kept) for r in half.train)
    assert any(r.grade >= REFERABLE_MIN_GRADE for r in half.train)
    with pytest.raises(ConfigError, match="train_fraction"):
        splits(0.0)


def _rows(grades, p_ref, patients=None, threshold=0.5):
    rows = []
    for i, (g, p) in enumerate(zip(grades, p_ref, strict=True)):
        probs = [(1 - p) / 2, (1 - p) / 2, p, 0.0, 0.0]
        rows.append({"id": str(i), "patient": (patients or list(range(len(grades))))[i],
                     "grade": g, **{f"p{k}": v for k, v in enumerate(probs)},
                     "referable_threshold": threshold, "vision_threatening_threshold": 0.5,
                     "grade_cuts": ""})
    return rows


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_more_patients():
    rng = np.random.default_rng(0)
    small, large = [], []
    for n, out in ((60, small), (600, large)):
        grades = rng.choice([0, 2], size=n, p=[0.7, 0.3])
        p = np.clip(0.5 + 0.3 * (grades == 2) - 0.15 + rng.normal(0, 0.2, n), 0, 1)
        out.append(bootstrap.bootstrap(bootstrap.outcomes_from_rows(_rows(grades, p)), reps=400))
    for key in ("referable_auroc", "kappa_quadratic", "sensitivity", "specificity"):
        lo, hi = small[0][key]["ci95"]
        assert lo <= small[0][key]["value"] <= hi
        width_small = hi - lo
        lo, hi = large[0][key]["ci95"]
        assert hi - lo < width_small


def test_outcomes_follow_each_folds_own_operating_point():
    rows = _rows([2, 2, 0, 0], [0.6, 0.3, 0.25, 0.1], threshold=0.5)
    rows[1]["referable_threshold"] = 0.2  # another fold, a lower threshold
    o = bootstrap.outcomes_from_rows(rows)
    assert o.referable_call.tolist() == [True, True, False, False]
    assert bootstrap.point_metrics(o)["sensitivity"] == 1.0
    assert (o.decided >= 2).tolist() == o.referable_call.tolist()  # one decision per photo


def test_bootstrap_resamples_patients_not_photos():
    # two photos of one patient always travel together: a patient whose eyes disagree
    rows = _rows([2, 0], [0.9, 0.1], patients=["a", "a"])
    result = bootstrap.bootstrap(bootstrap.outcomes_from_rows(rows), reps=50)
    assert result["n_patients"] == 1
    assert result["sensitivity"]["ci95"] == [1.0, 1.0]
    assert result["referable_auroc"]["ci95"] == [1.0, 1.0]


def test_crossval_command_runs_folds_and_reuses_finished_ones(tmp_path, synthetic_aptos,
                                                              monkeypatch):
    overrides = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs",
                               "baseline") + [
        "optim.epochs=1", "data.cv_folds=2", "data.val_fraction=0.2",
        "data.calibration_fraction=0.25", "optim.select_metric=referable_auroc",
        "run_name=cvtiny"]
    argv = ["--config", str(Path("training/configs/baseline.yaml")), "--no-progress",
            "--bootstrap", "100"] + [a for o in overrides for a in ("--set", o)]
    assert crossval.main(argv) == 0
    out = tmp_path / "runs" / "cvtiny-cv"
    summary = json.loads((out / "cv_summary.json").read_text())
    assert len(summary["timings"]) == 2 and len(summary["per_fold"]) == 2
    ids = []
    for k in range(2):
        with (out / f"fold{k}" / "test_predictions.csv").open() as fh:
            fold_test = [row["id"] for row in csv.DictReader(fh)]
        with (out / f"fold{k}" / "calibration_predictions.csv").open() as fh:
            fold_calibration = [row["id"] for row in csv.DictReader(fh)]
        assert fold_calibration and not set(fold_calibration) & set(fold_test)
        ids += fold_test
        evaluation = json.loads((out / f"fold{k}" / "bundle" / "manifest.json").read_text())[
            "evaluation"]
        assert evaluation["split"] == "calibration"
        assert {"selection", "test"} <= set(evaluation)
        card = (out / f"fold{k}" / "bundle" / "MODEL_CARD.md").read_text()
        assert "calibration (" in card and "test (" in card
    assert len(ids) == len(set(ids)) == 48  # every photo tested exactly once
    (result,) = summary["results"].values()
    assert result["n_photos"] == 48
    assert "referable AUROC" in (out / "cv_table.md").read_text()
    monkeypatch.setattr("training.trainer.run.run", lambda *a, **k: pytest.fail("fold re-run"))
    assert crossval.main(argv) == 0  # both folds reused
    assert crossval.main(argv + ["--set", "version=9.9.9"]) == 0  # a new label trains nothing
    for k in range(2):  # folds saved before a config field existed: at its default, no change
        saved = out / f"fold{k}" / "config.yaml"
        text = saved.read_text(encoding="utf-8")
        assert "\n  train_fraction: 1.0\n" in text
        saved.write_text(text.replace("\n  train_fraction: 1.0\n", "\n"), encoding="utf-8")
    assert crossval.main(argv) == 0
    with pytest.raises(pytest.fail.Exception, match="fold re-run"):  # a new recipe does
        crossval.main(argv + ["--set", "optim.lr=0.123"])


def test_separate_calibration_split_is_what_calibration_sees(tmp_path, synthetic_aptos):
    from training.trainer.run import run

    cfg = load_config("training/configs/baseline.yaml", tiny_overrides(
        synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "baseline") + [
        "optim.epochs=1", "data.val_fraction=0.2", "data.calibration_fraction=0.25",
        "run_name=calsplit"])
    result = run(cfg, progress=False)
    evaluation = result.bundle.manifest.evaluation
    assert evaluation["split"] == "calibration"
    assert evaluation["n"] + evaluation["selection"]["n"] < 48
    assert "calibration" in result.bundle.manifest.provenance.training_data


def test_a_bundle_is_judged_by_its_cross_validation_when_it_has_one():
    from core.grading import headline_figures, near_chance

    validation = {"referable": {"auroc": 0.95}, "kappa_quadratic": 0.8}
    cv = {"results": {"recipe, out-of-fold": {"referable_auroc": {"value": 0.66},
                                              "kappa_quadratic": {"value": 0.3}},
                      "demo-baseline (existing bundle)": {"referable_auroc": {"value": 0.9}}}}
    assert headline_figures(validation) == (0.95, 0.8) and not near_chance(validation)
    with_cv = dict(validation, cross_validation=cv)
    assert headline_figures(with_cv) == (0.66, 0.3)  # its own recipe's row, not a comparison's
    assert near_chance(with_cv)


def test_the_near_chance_reason_names_the_figures_and_where_they_came_from():
    """The Compare page once said "near chance on its validation data" for a bundle judged by
    its cross-validation, beside a banner quoting that cross-validation."""
    from core.grading import near_chance_reason

    cv = {"results": {"recipe, out-of-fold": {"referable_auroc": {"value": 0.714},
                                              "kappa_quadratic": {"value": 0.168}}}}
    assert near_chance_reason({"referable": {"auroc": 0.9}, "kappa_quadratic": 0.8}) is None
    assert near_chance_reason({"referable": {"auroc": 0.9}, "cross_validation": cv}) == \
        "near chance on its cross-validation (kappa 0.17 < 0.20)"
    assert near_chance_reason({"referable": {"auroc": 0.61}, "kappa_quadratic": 0.1}) == \
        "near chance on its validation data (AUROC 0.61 < 0.70, kappa 0.10 < 0.20)"
    assert near_chance_reason({}) == "no validation metrics"
