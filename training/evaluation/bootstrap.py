"""Per-photo outcomes, their point metrics, patient-bootstrap 95% intervals, and the table.

Shared by every report that grades photos and states an interval (cross-validation, held-out
and cross-dataset evaluation, paired comparisons, learning curves, operating rules), so they all
resample the same way: both eyes of a patient travel together, and the same seed draws the same
patients for every caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.grading import Thresholds, decide
from training.common.metrics import binary_auroc, cohen_kappa

BOOTSTRAP_REPS = 2000


@dataclass
class Outcomes:
    """Per photo: truth, the decided grade and referable flag, and the score behind it."""

    ids: list[str]
    patients: list[str]
    grade: np.ndarray
    decided: np.ndarray
    referable_call: np.ndarray
    p_referable: np.ndarray
    # truth of "referable" when it is not grade >= 2 alone (grade >= 2 or a DME label)
    referable_truth: np.ndarray | None = None

    def is_referable(self) -> np.ndarray:
        return self.grade >= 2 if self.referable_truth is None else self.referable_truth


def outcomes_from_rows(rows: list[dict[str, Any]], *, use_dme: bool = True,
                       dme_in_truth: bool = False) -> Outcomes:
    """Rows with id, patient, grade, p0..p4 and the fold's thresholds -> decided outcomes.

    Rows that carry p_dme and dme_threshold (a bundle with a DME output) are decided with it
    unless use_dme is off; dme_in_truth counts a photo with a DME label of 1 as referable
    (the programmes' definition: grade >= 2 and/or DME)."""
    decided, calls, scores = [], [], []
    for row in rows:
        probs = [float(row[f"p{g}"]) for g in range(5)]
        cuts = tuple(float(c) for c in str(row.get("grade_cuts") or "").split()) or None
        dme_t = _number(row.get("dme_threshold")) if use_dme else None
        decision = decide(probs, Thresholds(
            float(row["referable_threshold"]), float(row["vision_threatening_threshold"]), cuts,
            vt_grade_by_probability=str(row.get("vt_grade_by_probability") or "0") == "1",
            dme=dme_t), p_dme=_number(row.get("p_dme")) if dme_t is not None else None)
        decided.append(decision.grade)
        calls.append(bool(decision.referable))
        scores.append(sum(probs[2:]))
    grade = np.array([int(r["grade"]) for r in rows])
    truth = None
    if dme_in_truth:
        truth = (grade >= 2) | np.array([_number(r.get("dme_label")) == 1 for r in rows])
    return Outcomes([r["id"] for r in rows], [r["patient"] for r in rows], grade,
                    np.array(decided), np.array(calls), np.array(scores), truth)


def _number(value: Any) -> float | None:
    """A CSV cell or a value as a float; None for an empty cell (no DME output / no label)."""
    if value is None or value == "":
        return None
    return float(value)


def point_metrics(o: Outcomes, idx: np.ndarray | None = None) -> dict[str, float | None]:
    idx = np.arange(len(o.ids)) if idx is None else idx
    y, ref = o.grade[idx], o.is_referable()[idx]
    call = o.referable_call[idx]
    return {
        "referable_auroc": binary_auroc(ref, o.p_referable[idx]),
        "kappa_quadratic": cohen_kappa(y, o.decided[idx], quadratic=True),
        "sensitivity": float(call[ref].mean()) if ref.any() else None,
        "specificity": float((~call[~ref]).mean()) if (~ref).any() else None,
    }


def patient_resamples(photo_patients: list[str], reps: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Photo indices of `reps` bootstrap draws of patients with replacement (a patient's photos
    travel together); the same seed gives the same draws to every caller."""
    patients = sorted(set(photo_patients))
    rows_of: dict[str, list[int]] = {p: [] for p in patients}
    for i, p in enumerate(photo_patients):
        rows_of[p].append(i)
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        chosen = rng.integers(0, len(patients), len(patients))
        yield np.fromiter((i for c in chosen for i in rows_of[patients[c]]), dtype=np.int64)


def bootstrap(o: Outcomes, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Any]:
    """Point estimates and percentile 95% intervals, resampling patients with replacement."""
    patients = sorted(set(o.patients))
    draws: dict[str, list[float]] = {k: [] for k in point_metrics(o)}
    for idx in patient_resamples(o.patients, reps, seed):
        for key, value in point_metrics(o, idx).items():
            if value is not None:
                draws[key].append(value)
    point = point_metrics(o)
    return {key: {"value": point[key],
                  "ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                  if len(v) >= reps // 2 else None}
            for key, v in draws.items()} | {
        "n_photos": len(o.ids), "n_patients": len(patients),
        "n_referable": int(o.is_referable().sum()), "bootstrap_reps": reps}



def _cell(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    ci = entry["ci95"]
    return f"{entry['value']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def table(results: dict[str, dict[str, Any]], first: str = "model") -> str:
    lines = [f"| {first} | photos (patients, referable) | referable AUROC | quadratic kappa | "
             "sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n_photos']} ({r['n_patients']}, {r['n_referable']}) | "
                     + " | ".join(_cell(r[k]) for k in ("referable_auroc", "kappa_quadratic",
                                                        "sensitivity", "specificity")) + " |")
    return "\n".join(lines) + "\n"
