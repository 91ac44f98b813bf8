"""Does the fellow eye help? Referable DR ranked per eye by the photo's own score, by the
patient's pooled score, and per patient (either eye referable), from a cross-validation
folder's out-of-fold predictions.

    python -m training.evaluation.patient_level runs/eyepacs-lite0-cv

Why: the two eyes of a patient usually share their referable status (in EyePACS's
trainLabels 181 of 192 pairs agree), and screening programmes refer the patient, not the eye.
A per-eye grader that scores each photo alone leaves that information unused. This measures
how much it is worth before anyone builds it into a card; a card's per-eye statement should
not silently depend on another photo. Scores are p(referable) = p2 + p3 + p4 as served; both
eyes of a patient are always in the same fold, so pooled scores come from one model. Intervals:
bootstrap over patients (2,000 resamples); the difference to the photo's own score is paired.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.common.metrics import binary_auroc
from training.evaluation.bootstrap import BOOTSTRAP_REPS
from training.evaluation.crossval import fold_report_main
from training.evaluation.operating_rules import read_split

POOLS: dict[str, Callable[[np.ndarray], float]] = {"mean": np.mean, "max": np.max}


@dataclass(frozen=True)
class EyeScores:
    """Out-of-fold photos: patient, referable truth, and the photo's own p(referable)."""

    patients: np.ndarray
    referable: np.ndarray
    score: np.ndarray

    def rows_of(self) -> dict[str, np.ndarray]:
        return {p: np.flatnonzero(self.patients == p) for p in sorted(set(self.patients))}


def read_out_of_fold(cv_dir: Path) -> EyeScores:
    files = sorted(cv_dir.glob("fold*/test_predictions.csv"))
    if not files:
        raise SystemExit(f"{cv_dir}: no fold*/test_predictions.csv (run training.evaluation.crossval)")
    patients, referable, score = [], [], []
    for f in files:
        rows, probs, grades = read_split(f)
        patients += [r["patient"] for r in rows]
        referable += list(grades >= 2)
        score += list(probs[:, 2:].sum(1))
    return EyeScores(np.array(patients), np.array(referable, bool), np.array(score))


def pooled_per_eye(eyes: EyeScores, pool: str) -> np.ndarray:
    """Each photo scored by the pool of its patient's photos (itself included)."""
    out = np.empty_like(eyes.score)
    for idx in eyes.rows_of().values():
        out[idx] = POOLS[pool](eyes.score[idx])
    return out


def per_patient(eyes: EyeScores, pool: str) -> tuple[np.ndarray, np.ndarray]:
    """(patient referable if either eye is, pooled score), in sorted patient order."""
    groups = eyes.rows_of().values()
    return (np.array([eyes.referable[i].any() for i in groups]),
            np.array([POOLS[pool](eyes.score[i]) for i in groups]))


def _measures(eyes: EyeScores) -> dict[str, Callable[[np.ndarray], float | None]]:
    """name -> AUROC over a resample, given as indices into the sorted patients."""
    groups = list(eyes.rows_of().values())
    mean_eye, max_eye = pooled_per_eye(eyes, "mean"), pooled_per_eye(eyes, "max")
    pat = {pool: per_patient(eyes, pool) for pool in POOLS}

    def eye_auc(score: np.ndarray) -> Callable[[np.ndarray], float | None]:
        return lambda pick: binary_auroc(*_eye_rows(eyes.referable, score, groups, pick))

    def pat_auc(pool: str) -> Callable[[np.ndarray], float | None]:
        return lambda pick: binary_auroc(pat[pool][0][pick], pat[pool][1][pick])

    def paired(pick: np.ndarray) -> float | None:
        a, b = eye_auc(mean_eye)(pick), eye_auc(eyes.score)(pick)
        return None if a is None or b is None else a - b

    return {"eye: own photo's p(referable) (as served)": eye_auc(eyes.score),
            "eye: mean of the patient's photos": eye_auc(mean_eye),
            "eye: max of the patient's photos": eye_auc(max_eye),
            "eye: mean of the patient's photos minus own photo (paired)": paired,
            "patient (either eye referable): mean of the eyes": pat_auc("mean"),
            "patient (either eye referable): max of the eyes": pat_auc("max")}


def _eye_rows(y: np.ndarray, score: np.ndarray, groups: list[np.ndarray],
              pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.concatenate([groups[i] for i in pick])
    return y[idx], score[idx]


def table(eyes: EyeScores, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, dict]:
    """Point estimate and percentile 95% interval of every measure, patients resampled."""
    measures = _measures(eyes)
    n = len(eyes.rows_of())
    everyone = np.arange(n)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in measures}
    for _ in range(reps):
        pick = rng.integers(0, n, n)
        for name, f in measures.items():
            if (v := f(pick)) is not None:
                draws[name].append(v)
    return {name: {"value": f(everyone),
                   "ci95": [float(np.percentile(draws[name], q)) for q in (2.5, 97.5)]}
            for name, f in measures.items()}


def report(cv_dir: Path, reps: int = BOOTSTRAP_REPS) -> str:
    eyes = read_out_of_fold(cv_dir)
    pat_y, _ = per_patient(eyes, "max")
    lines = [f"# Fellow eye: referable AUROC on {cv_dir}, out of fold", "",
             f"{len(eyes.score)} photos ({int(eyes.referable.sum())} referable), "
             f"{len(pat_y)} patients ({int(pat_y.sum())} with a referable eye); bootstrap over "
             f"patients, {reps} resamples.", "", "| ranking | referable AUROC (95% interval) |",
             "|---|---|"]
    for name, entry in table(eyes, reps).items():
        lo, hi = entry["ci95"]
        lines.append(f"| {name} | {entry['value']:+.3f} ({lo:+.3f} to {hi:+.3f}) |"
                     if "minus" in name else
                     f"| {name} | {entry['value']:.3f} ({lo:.3f}-{hi:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return fold_report_main("python -m training.evaluation.patient_level", __doc__, report, argv)


if __name__ == "__main__":
    sys.exit(main())
