"""Two cross-validations of the same photos, compared photo for photo: each recipe's out-of-fold
figures and their difference, with a paired bootstrap interval.

    python -m training.evaluation.paired_cv runs/eyepacs-lite0-tta-cv runs/eyepacs-lite0-cv
    python -m training.evaluation.paired_cv runs/multisource-lite0 runs/multisource-lite0-fp32  # held out

Why: two recipes' separate intervals (0.68-0.83 at 395 photos) overlap for almost any change
worth trying, yet most of their width is which photos happened to be hard, and that is shared.
Resampling the same patients for both recipes at once measures the change itself. Each photo
is decided by its own fold's calibrated rule, as in training.evaluation.crossval; both folders must hold
the same photos (the same config's folds, as crossval splits by a fixed seed).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.bootstrap import (
    BOOTSTRAP_REPS,
    Outcomes,
    outcomes_from_rows,
    patient_resamples,
    point_metrics,
)
from training.evaluation.crossval import read_oof

LABELS = {"referable_auroc": "referable AUROC", "kappa_quadratic": "quadratic kappa",
          "sensitivity": "sensitivity", "specificity": "specificity"}


def read_outcomes(cv_dir: Path) -> Outcomes:
    """Every fold's test predictions of one crossval folder, decided as served; or the test
    predictions of one run with a fixed held-out split (data.test_fraction)."""
    if (cv_dir / "test_predictions.csv").is_file():
        with (cv_dir / "test_predictions.csv").open(newline="", encoding="utf-8") as fh:
            return outcomes_from_rows(list(csv.DictReader(fh)))
    folds = len([p for p in cv_dir.glob("fold*") if (p / "test_predictions.csv").is_file()])
    if not folds:
        raise SystemExit(f"{cv_dir}: no fold*/test_predictions.csv (run training.evaluation.crossval first)")
    return outcomes_from_rows(read_oof(cv_dir, folds))


def aligned(a: Outcomes, b: Outcomes) -> np.ndarray:
    """Indices that put b's photos in a's order; the two must hold the same photos and truth."""
    where = {photo: i for i, photo in enumerate(b.ids)}
    if set(where) != set(a.ids) or len(where) != len(b.ids):
        raise SystemExit(f"the two folders hold different photos ({len(a.ids)} vs {len(b.ids)}; "
                         f"{len(set(a.ids) ^ set(where))} not in both): not a paired comparison")
    order = np.array([where[photo] for photo in a.ids])
    if not np.array_equal(a.grade, b.grade[order]):
        raise SystemExit("the two folders disagree on some photos' grades")
    return order


def paired(a: Outcomes, b: Outcomes, reps: int = BOOTSTRAP_REPS,
           seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per metric: a, b and a - b, each with a percentile 95% interval; the same patients are
    drawn for both, so the difference's interval is paired."""
    order = aligned(a, b)
    draws: dict[str, dict[str, list[float]]] = {k: {"a": [], "b": [], "diff": []} for k in LABELS}
    for idx in patient_resamples(a.patients, reps, seed):
        _draw(draws, point_metrics(a, idx), point_metrics(b, order[idx]))
    pa, pb = point_metrics(a), point_metrics(b, order)
    point = {k: {"a": pa[k], "b": pb[k], "diff": _diff(pa[k], pb[k])} for k in LABELS}
    return {k: {side: {"value": point[k][side], "ci95": _ci(draws[k][side], reps)}
                for side in ("a", "b", "diff")} for k in LABELS}


def _draw(draws: dict, ma: dict, mb: dict) -> None:
    for key in LABELS:
        if ma[key] is not None and mb[key] is not None:
            draws[key]["a"].append(ma[key])
            draws[key]["b"].append(mb[key])
            draws[key]["diff"].append(ma[key] - mb[key])


def _diff(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def _ci(values: list[float], reps: int) -> list[float] | None:
    if len(values) < reps // 2:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def report(a_dir: Path, b_dir: Path, reps: int = BOOTSTRAP_REPS) -> str:
    a, b = read_outcomes(a_dir), read_outcomes(b_dir)
    result = paired(a, b, reps)
    held_out = (a_dir / "test_predictions.csv").is_file()  # a run's fixed held-out split
    title, where = (("held-out split", "on the held-out test split, each photo decided by its "
                     "run's rule") if held_out else
                    ("cross-validation", "out of fold, each photo decided by its own fold's rule"))
    lines = [f"# Paired {title}: A = {a_dir}, B = {b_dir}", "",
             f"{len(a.ids)} photos ({int((a.grade >= 2).sum())} referable), "
             f"{len(set(a.patients))} patients; {where}; 95% intervals: bootstrap over "
             f"patients, {reps} resamples, the same patients for A and B.", "",
             "| metric | A | B | A - B (paired) |", "|---|---|---|---|"]
    for key, label in LABELS.items():
        r = result[key]
        lines.append(f"| {label} | {_cell(r['a'])} | {_cell(r['b'])} | "
                     f"{_cell(r['diff'], signed=True)} |")
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any], signed: bool = False) -> str:
    value, ci = entry["value"], entry["ci95"]
    if value is None:
        return "n/a"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    sep = " to " if signed else "-"
    return fmt.format(value) + (f" ({fmt.format(ci[0])}{sep}{fmt.format(ci[1])})" if ci else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.paired_cv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a_dir", type=Path, help="a training.evaluation.crossval output folder (A)")
    parser.add_argument("b_dir", type=Path, help="another, over the same photos (B)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    text = report(args.a_dir, args.b_dir, args.bootstrap)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
