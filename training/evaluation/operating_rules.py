"""Which operating rule a bundle should serve: each candidate fitted where the shipped one was
(every cross-validation fold's calibration split) and measured where it was (that fold's test
photos, used for neither training, epoch choice nor calibration).

    python -m training.evaluation.operating_rules runs/eyepacs-lite0-ordinal-cv

Why: a rule fitted on 81 photos with 8 vision-threatening eyes can read well on its own split
and still say odd things on others ("PDR, probability 5%" with 70% on severe NPDR; grade-0 eyes
flagged vision-threatening). Besides the cross-validation table's figures (with bootstrap
intervals over patients), each row counts what a clinician reads on the cards: grade-0 eyes
flagged vision-threatening, and cards whose grade is less than half as probable as another
grade its own flags allow. Choosing among these rows by their test figures makes the chosen
row's figures slightly optimistic; the notes that use them say so.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.grading import Thresholds, decide, grade_band
from training.evaluation.bootstrap import Outcomes, bootstrap
from training.evaluation.crossval import fold_report_main
from training.trainer.finalize import fit_operating_rule


@dataclass(frozen=True)
class Rule:
    """How flags and grades are fitted on a calibration split."""

    name: str
    referable_sensitivity: float = 0.9
    vt_sensitivity: float = 0.9
    vt_grade_by_probability: bool = False  # severe NPDR vs PDR: the more probable of the two

    def fit(self, probs: np.ndarray, y: np.ndarray) -> Thresholds:
        return fit_operating_rule(probs, y, self.referable_sensitivity, self.vt_sensitivity,
                                  vt_grade_by_probability=self.vt_grade_by_probability)


RULES = (
    Rule("flags at sensitivity 0.9, cut points for every grade"),
    Rule("flags at sensitivity 0.9, severe NPDR vs PDR by the more probable",
         vt_grade_by_probability=True),
    Rule("as above, vtDR flag at sensitivity 0.8", vt_sensitivity=0.8,
         vt_grade_by_probability=True),
)


def read_split(path: Path) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows])
    return rows, probs, np.array([int(r["grade"]) for r in rows])


def fold_dirs(cv_dir: Path) -> list[Path]:
    folds = sorted(p for p in cv_dir.glob("fold*") if (p / "test_predictions.csv").is_file())
    missing = [p.name for p in folds if not (p / "calibration_predictions.csv").is_file()]
    if not folds or missing:
        raise SystemExit(f"{cv_dir}: need every fold's test_predictions.csv and "
                         f"calibration_predictions.csv (re-run training.evaluation.crossval); missing "
                         f"calibration predictions in {missing or 'all folds'}")
    return folds


def stored_rule_reproduced(folds: list[Path], tol: float = 1e-4) -> bool:
    """Does the rule the folds were run with (flags at sensitivity 0.9, severe NPDR vs PDR as
    each fold stored it), refitted on each calibration split, give the thresholds the fold
    stored? If not, this module fits rules differently from training and its rows are void."""
    for fold in folds:
        _, probs, y = read_split(fold / "calibration_predictions.csv")
        stored, _, _ = read_split(fold / "test_predictions.csv")
        by_p = str(stored[0].get("vt_grade_by_probability") or "0") == "1"
        fitted = Rule("stored", vt_grade_by_probability=by_p).fit(probs, y)
        cuts = [float(c) for c in stored[0]["grade_cuts"].split()]
        pairs = [(fitted.referable, float(stored[0]["referable_threshold"])),
                 (fitted.vision_threatening, float(stored[0]["vision_threatening_threshold"])),
                 *zip(fitted.grade_cuts or (), cuts, strict=True)]
        if any(abs(a - b) > tol for a, b in pairs):
            return False
    return True


def out_of_fold(rule: Rule, folds: list[Path]) -> tuple[Outcomes, dict[str, Any]]:
    """The rule fitted on each fold's calibration split, decided on its test photos."""
    ids, patients, truth, decided, calls, scores, odd = [], [], [], [], [], [], 0
    for fold in folds:
        _, cal_probs, cal_y = read_split(fold / "calibration_predictions.csv")
        thresholds = rule.fit(cal_probs, cal_y)
        rows, probs, y = read_split(fold / "test_predictions.csv")
        for row, p, g in zip(rows, probs, y, strict=True):
            d = decide(p, thresholds)
            band = grade_band(float(p[2:].sum()), float(p[3:].sum()), thresholds)
            odd += any(p[other] > 2 * p[d.grade] for other in band)
            ids.append(row["id"])
            patients.append(row["patient"])
            truth.append(g)
            decided.append(d.grade)
            calls.append(bool(d.referable))
            scores.append(float(p[2:].sum()))
    o = Outcomes(ids, patients, np.array(truth), np.array(decided), np.array(calls),
                 np.array(scores))
    return o, card_counts(o, odd)


def card_counts(o: Outcomes, odd: int) -> dict[str, Any]:
    vt_true, vt_call = o.grade >= 3, o.decided >= 3
    served_vt = vt_true & vt_call
    return {
        "vt_sensitivity": float(vt_call[vt_true].mean()),
        "vt_specificity": float((~vt_call[~vt_true]).mean()),
        "grade0_called_vt": int((vt_call & (o.grade == 0)).sum()),
        "n_grade0": int((o.grade == 0).sum()),
        "vt_grade_exact": f"{int((o.decided == o.grade)[served_vt].sum())}/{int(served_vt.sum())}",
        "served_grades": np.bincount(o.decided, minlength=5).tolist(),
        "odd_cards": odd,
    }


def report(cv_dir: Path, reps: int) -> str:
    folds = fold_dirs(cv_dir)
    lines = [f"# Operating rules on {cv_dir} ({len(folds)} folds, out-of-fold)", "",
             "Each rule fitted on every fold's calibration split, decided on its test photos "
             f"(bootstrap over patients, {reps} resamples).", "",
             "| rule | referable AUROC | QWK | sensitivity | specificity | vtDR sens / spec | "
             "grade-0 eyes called vtDR | vtDR eyes graded 3/4 exactly | served grades 0-4 | "
             "odd cards |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rule in RULES:
        outcomes, counts = out_of_fold(rule, folds)
        b = bootstrap(outcomes, reps)
        cells = [_cell(b[k]) for k in ("referable_auroc", "kappa_quadratic", "sensitivity",
                                        "specificity")]
        lines.append(
            f"| {rule.name} | " + " | ".join(cells) +
            f" | {counts['vt_sensitivity']:.3f} / {counts['vt_specificity']:.3f} | "
            f"{counts['grade0_called_vt']}/{counts['n_grade0']} | {counts['vt_grade_exact']} | "
            f"{' '.join(map(str, counts['served_grades']))} | {counts['odd_cards']} |")
    lines += ["", "The rule the folds were run with, refitted on each calibration split, "
              + ("reproduces" if stored_rule_reproduced(folds) else "does NOT reproduce")
              + " the thresholds and cut points each fold stored."]
    lines += ["", "odd cards: the served grade is less than half as probable as another grade "
              "its own flags allow (e.g. PDR at 5% beside severe NPDR at 70%)."]
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any]) -> str:
    ci = entry["ci95"]
    return f"{entry['value']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def main(argv: list[str] | None = None) -> int:
    return fold_report_main("python -m training.evaluation.operating_rules", __doc__, report, argv)


if __name__ == "__main__":
    sys.exit(main())
