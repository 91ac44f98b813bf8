"""training.evaluation.patient_level: the fellow eye's score, pooled per patient, measured out of fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.manifest import CalibrationSpec
from training.evaluation import patient_level
from training.evaluation.bootstrap import bootstrap, outcomes_from_rows
from training.evaluation.crossval import read_oof
from training.trainer.datasets import LabelledImage
from training.trainer.splits import write_predictions


def _fold(folder: Path, k: int, rng: np.random.Generator, patients: int = 40) -> None:
    """Both eyes of a patient share their referable status; each photo's score is that status
    plus a lot of photo-level noise, so averaging the two photos must help."""
    folder.mkdir(parents=True)
    records, probs = [], []
    for i in range(patients):
        referable = rng.random() < 0.3
        for eye in ("left", "right"):
            grade = int(rng.choice([2, 3])) if referable else int(rng.choice([0, 1]))
            p_ref = 1 / (1 + np.exp(-(1.0 * referable + rng.normal(0, 1.0) - 0.5)))
            probs.append([(1 - p_ref) / 2, (1 - p_ref) / 2, p_ref / 2, p_ref / 4, p_ref / 4])
            records.append(LabelledImage(f"{k}_{i}_{eye}", Path("x"), grade, f"{k}_{i}"))
    write_predictions(folder / "test_predictions.csv", records, np.array(probs),
                      CalibrationSpec(1.0, 0.5, 0.8, None, False), k)


@pytest.fixture
def cv_dir(tmp_path):
    rng = np.random.default_rng(3)
    for k in range(2):
        _fold(tmp_path / f"fold{k}", k, rng)
    return tmp_path


def test_pooling_and_patient_truth():
    eyes = patient_level.EyeScores(np.array(["a", "a", "b"]), np.array([True, False, False]),
                                   np.array([0.2, 0.6, 0.1]))
    assert patient_level.pooled_per_eye(eyes, "mean") == pytest.approx([0.4, 0.4, 0.1])
    assert patient_level.pooled_per_eye(eyes, "max") == pytest.approx([0.6, 0.6, 0.1])
    truth, score = patient_level.per_patient(eyes, "max")
    assert truth.tolist() == [True, False] and score == pytest.approx([0.6, 0.1])


def test_own_row_is_the_cross_validation_figure_and_the_fellow_eye_helps(cv_dir):
    eyes = patient_level.read_out_of_fold(cv_dir)
    assert len(eyes.score) == 160 and len(eyes.rows_of()) == 80
    result = patient_level.table(eyes, reps=200)
    own = result["eye: own photo's p(referable) (as served)"]
    served = bootstrap(outcomes_from_rows(read_oof(cv_dir, 2)), reps=200)["referable_auroc"]
    assert own["value"] == pytest.approx(served["value"])
    assert own["ci95"] == pytest.approx(served["ci95"])  # same patients resampled the same way
    gain = result["eye: mean of the patient's photos minus own photo (paired)"]
    assert gain["ci95"][0] > 0  # shared status, independent noise: averaging must help here
    assert gain["value"] == pytest.approx(
        result["eye: mean of the patient's photos"]["value"] - own["value"])


def test_the_command_prints_and_writes_the_table(cv_dir, tmp_path, capsys):
    out = tmp_path / "fellow.md"
    assert patient_level.main([str(cv_dir), "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "160 photos" in printed and "80 patients" in printed
    assert out.read_text() == printed.rstrip("\n") + "\n"
    with pytest.raises(SystemExit, match="no fold"):
        patient_level.main([str(tmp_path / "empty")])
