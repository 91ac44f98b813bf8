"""training.evaluation.paired_cv: two cross-validations of the same photos, compared photo for photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.manifest import CalibrationSpec
from training.evaluation import paired_cv
from training.evaluation.bootstrap import bootstrap
from training.trainer.datasets import LabelledImage
from training.trainer.splits import write_predictions


def _cv(folder: Path, noise: float, photos: int = 120, seed: int = 5) -> Path:
    """Two folds of photos whose p(referable) is the truth plus `noise`; the same photos and
    truths whatever the noise (the truth is drawn from its own generator)."""
    truth_rng, noise_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    for k in range(2):
        records, probs = [], []
        for i in range(photos // 2):
            grade = int(truth_rng.choice([0, 1, 2, 3]))
            z = (grade >= 2) + noise_rng.normal(0, noise) - 0.5
            p_ref = float(1 / (1 + np.exp(-3 * z)))
            probs.append([(1 - p_ref) / 2, (1 - p_ref) / 2, p_ref / 2, p_ref / 4, p_ref / 4])
            records.append(LabelledImage(f"{k}_{i}", Path("x"), grade, f"patient{k}_{i // 2}"))
        (folder / f"fold{k}").mkdir(parents=True)
        write_predictions(folder / f"fold{k}" / "test_predictions.csv", records, np.array(probs),
                          CalibrationSpec(1.0, 0.5, 0.8, None, False), k)
    return folder


def test_a_run_against_itself_differs_by_nothing_and_matches_crossval(tmp_path):
    run = paired_cv.read_outcomes(_cv(tmp_path / "a", noise=0.6))
    result = paired_cv.paired(run, run, reps=200)
    served = bootstrap(run, reps=200)
    for key in paired_cv.LABELS:
        assert result[key]["diff"]["value"] == 0 and result[key]["diff"]["ci95"] == [0, 0]
        assert result[key]["a"]["value"] == pytest.approx(served[key]["value"])
        assert result[key]["a"]["ci95"] == pytest.approx(served[key]["ci95"])


def test_a_sharper_run_is_told_apart_although_the_separate_intervals_overlap(tmp_path):
    sharp = paired_cv.read_outcomes(_cv(tmp_path / "sharp", noise=0.6))
    blunt = paired_cv.read_outcomes(_cv(tmp_path / "blunt", noise=0.9))
    auroc = paired_cv.paired(sharp, blunt, reps=400)["referable_auroc"]
    assert auroc["diff"]["value"] == pytest.approx(auroc["a"]["value"] - auroc["b"]["value"])
    assert auroc["diff"]["ci95"][0] > 0  # the paired interval sees the gain ...
    assert auroc["b"]["ci95"][1] > auroc["a"]["ci95"][0]  # ... the separate ones overlap


def test_photos_in_another_order_are_paired_by_id(tmp_path):
    a = paired_cv.read_outcomes(_cv(tmp_path / "a", noise=0.6))
    b = paired_cv.read_outcomes(_cv(tmp_path / "b", noise=0.9))
    flip = np.arange(len(b.ids))[::-1]
    b_reversed = type(b)([b.ids[i] for i in flip], [b.patients[i] for i in flip], b.grade[flip],
                         b.decided[flip], b.referable_call[flip], b.p_referable[flip])
    assert paired_cv.paired(a, b_reversed, reps=50) == paired_cv.paired(a, b, reps=50)


def test_different_photos_are_refused_with_a_reason(tmp_path):
    a = paired_cv.read_outcomes(_cv(tmp_path / "a", noise=0.6, photos=120))
    b = paired_cv.read_outcomes(_cv(tmp_path / "b", noise=0.6, photos=100))
    with pytest.raises(SystemExit, match="different photos"):
        paired_cv.paired(a, b, reps=10)
    with pytest.raises(SystemExit, match="no fold"):
        paired_cv.read_outcomes(tmp_path)


def test_command_prints_and_writes_the_table(tmp_path, capsys):
    a, b = _cv(tmp_path / "a", noise=0.6), _cv(tmp_path / "b", noise=0.9)
    out = tmp_path / "paired.md"
    assert paired_cv.main([str(a), str(b), "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| referable AUROC |" in printed and "A - B (paired)" in printed
    assert out.read_text() == printed.rstrip("\n") + "\n"


def test_a_held_out_run_reads_as_its_one_test_split(tmp_path):
    """A run with a fixed held-out split (data.test_fraction) keeps test_predictions.csv at its
    top: paired_cv reads that, the same photos as the folds joined."""
    folds = _cv(tmp_path / "cv", noise=0.6)
    single = tmp_path / "held-out"
    single.mkdir()
    lines = [(folds / "fold0" / "test_predictions.csv").read_text().splitlines()]
    lines.append((folds / "fold1" / "test_predictions.csv").read_text().splitlines()[1:])
    (single / "test_predictions.csv").write_text("\n".join(lines[0] + lines[1]) + "\n")
    joined, direct = paired_cv.read_outcomes(folds), paired_cv.read_outcomes(single)
    assert direct.ids == joined.ids and len(direct.ids) == 120
    assert paired_cv.paired(direct, joined, reps=50)["referable_auroc"]["diff"]["value"] == 0
    text = paired_cv.report(single, single, reps=20)
    assert text.startswith("# Paired held-out split:") and "out of fold" not in text
    assert paired_cv.report(folds, folds, reps=20).startswith("# Paired cross-validation:")
