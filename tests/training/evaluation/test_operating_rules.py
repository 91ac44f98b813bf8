"""training.evaluation.operating_rules: candidate rules fitted on each fold's calibration split, measured on
its test photos; the rule the folds ran with must be reproduced, or the rows are void."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.manifest import CalibrationSpec
from training.evaluation import operating_rules
from training.trainer.datasets import LabelledImage
from training.trainer.splits import write_predictions


def _probs(grades: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy probabilities that lean towards the truth; vtDR eyes put most mass on grade 3
    whatever their grade, as eyepacs-lite0 does."""
    logits = rng.normal(0, 1.0, (len(grades), 5))
    logits[np.arange(len(grades)), grades] += 1.5
    logits[grades >= 3, 3] += 2.0
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def _fold(folder: Path, k: int, rng: np.random.Generator, n: int = 60,
          rule_run: operating_rules.Rule = operating_rules.RULES[0]) -> None:
    """A fold as training.evaluation.crossval leaves it: the test rows carry the rule fitted on the
    calibration split."""
    folder.mkdir(parents=True)
    rule = None
    for split in ("calibration", "test"):
        grades = rng.choice(5, n, p=[0.6, 0.1, 0.14, 0.08, 0.08])
        grades[:4] = [3, 4, 3, 4]
        records = [LabelledImage(f"{k}{split}{i}", Path("x"), int(g), f"{k}{split}{i}")
                   for i, g in enumerate(grades)]
        probs = _probs(grades, rng)
        rule = rule or rule_run.fit(np.round(probs, 6), grades)
        write_predictions(folder / f"{split}_predictions.csv", records, probs,
                          CalibrationSpec(1.0, rule.referable, rule.vision_threatening,
                                          rule.grade_cuts, rule.vt_grade_by_probability), k)


def test_report_reproduces_the_shipped_rule_and_counts_cards(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        _fold(tmp_path / f"fold{k}", k, rng)
    folds = operating_rules.fold_dirs(tmp_path)
    assert operating_rules.stored_rule_reproduced(folds)
    shipped, counts = operating_rules.out_of_fold(operating_rules.RULES[0], folds)
    by_p, counts_by_p = operating_rules.out_of_fold(operating_rules.RULES[1], folds)
    assert len(shipped.ids) == 120 and shipped.ids == by_p.ids
    # the flags are the same rule; only the grade inside the vtDR band may change
    assert (shipped.referable_call == by_p.referable_call).all()
    assert ((shipped.decided >= 3) == (by_p.decided >= 3)).all()
    assert counts_by_p["odd_cards"] <= counts["odd_cards"]
    text = operating_rules.report(tmp_path, reps=50)
    assert "reproduces the thresholds" in text and text.count("\n| ") == len(
        operating_rules.RULES) + 1


def test_folds_run_with_vt_grade_by_probability_are_reproduced_as_such(tmp_path):
    rng = np.random.default_rng(2)
    _fold(tmp_path / "fold0", 0, rng, rule_run=operating_rules.RULES[1])
    folds = operating_rules.fold_dirs(tmp_path)
    assert operating_rules.stored_rule_reproduced(folds)
    # and the crossval table decides those rows with the rule they stored
    from training.evaluation.bootstrap import outcomes_from_rows
    from training.evaluation.crossval import read_oof
    stored = outcomes_from_rows(read_oof(tmp_path, 1))
    refitted, _ = operating_rules.out_of_fold(operating_rules.RULES[1], folds)
    assert (stored.decided == refitted.decided).all()


def test_a_tampered_fold_is_not_called_reproduced(tmp_path):
    rng = np.random.default_rng(1)
    _fold(tmp_path / "fold0", 0, rng)
    test_csv = tmp_path / "fold0" / "test_predictions.csv"
    lines = test_csv.read_text().splitlines()
    head, first = lines[0], lines[1].split(",")
    first[head.split(",").index("referable_threshold")] = "0.999"
    test_csv.write_text("\n".join([head, ",".join(first), *lines[2:]]) + "\n")
    assert not operating_rules.stored_rule_reproduced(operating_rules.fold_dirs(tmp_path))


def test_folds_without_calibration_predictions_are_refused(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "test_predictions.csv").write_text("id\n")
    with pytest.raises(SystemExit, match="calibration_predictions.csv"):
        operating_rules.fold_dirs(tmp_path)


def test_the_command_prints_and_writes_the_table(tmp_path, capsys):
    rng = np.random.default_rng(3)
    _fold(tmp_path / "cv" / "fold0", 0, rng)
    out = tmp_path / "rules.md"
    assert operating_rules.main([str(tmp_path / "cv"), "--bootstrap", "20",
                                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| rule |" in printed and out.read_text() == printed.rstrip("\n") + "\n"

