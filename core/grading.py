"""ICDR grades, composite results, worst-eye rules and follow-up guidance, as data.

Everything here follows ../shared/CLINICAL.md; nothing is derived from probabilities except the
composite probabilities themselves (p_referable = P(grade >= 2), p_vtdr = P(grade >= 3)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

GRADE_NAMES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")
REFERABLE_MIN_GRADE = 2  # "more than mild" (mtmDR): grade >= 2 and/or DME
VISION_THREATENING_MIN_GRADE = 3  # vtDR: grade >= 3 and/or centre-involving DME
DME_NOT_ASSESSED = "DME: not assessed (this model has no macular-oedema output)"


class Urgency(IntEnum):
    """Worklist order: vtDR > referable > ungradable > mild > none (higher = more urgent)."""

    NONE = 0
    MILD = 1
    UNGRADABLE = 2
    REFERABLE = 3
    VISION_THREATENING = 4

    @property
    def label(self) -> str:
        return _URGENCY_LABELS[self]


_URGENCY_LABELS = {
    Urgency.NONE: "No DR",
    Urgency.MILD: "Mild NPDR (not referable)",
    Urgency.UNGRADABLE: "Ungradable - re-image or refer",
    Urgency.REFERABLE: "Referable DR",
    Urgency.VISION_THREATENING: "Vision-threatening DR",
}


def grade_name(grade: int) -> str:
    return GRADE_NAMES[grade]


def p_referable(probs: Sequence[float]) -> float:
    return float(sum(probs[REFERABLE_MIN_GRADE:]))


def decide_grade(probs: Sequence[float], thresholds: Sequence[float] | None = None) -> int:
    """argmax; for an ordinal bundle, how many of its cut points E[grade] reaches.

    Ordinal bundles carry 4 cut points on the probability-weighted grade, tuned on validation
    for quadratic kappa; serving must decide the grade exactly as the reported kappa did.
    """
    if thresholds is None:
        return max(range(len(probs)), key=lambda g: probs[g])
    if len(thresholds) != len(probs) - 1 or list(thresholds) != sorted(thresholds):
        raise ValueError(f"grade thresholds must be {len(probs) - 1} sorted cut points, "
                         f"got {list(thresholds)}")
    expected = sum(g * float(p) for g, p in enumerate(probs))
    return sum(expected >= t for t in thresholds)


def p_vision_threatening(probs: Sequence[float]) -> float:
    return float(sum(probs[VISION_THREATENING_MIN_GRADE:]))


def urgency_of(grade: int | None, *, gradable: bool, referable: bool | None = None,
               vision_threatening: bool | None = None) -> Urgency:
    """Urgency of one field. The model's thresholded flags win over the grade when given,
    because the referable decision uses the bundle's operating point, not argmax alone."""
    if not gradable or grade is None:
        return Urgency.UNGRADABLE
    vt = vision_threatening if vision_threatening is not None else (
        grade >= VISION_THREATENING_MIN_GRADE)
    ref = referable if referable is not None else grade >= REFERABLE_MIN_GRADE
    if vt:
        return Urgency.VISION_THREATENING
    if ref:
        return Urgency.REFERABLE
    return Urgency.MILD if grade >= 1 else Urgency.NONE


def worst(urgencies: Iterable[Urgency]) -> Urgency:
    """The most urgent of several results."""
    items = list(urgencies)
    if not items:
        raise ValueError("worst() needs at least one result")
    return max(items)


def eye_urgency(field_urgencies: Iterable[Urgency]) -> Urgency:
    """Worst *gradable* field of an eye; ungradable only when no field could be graded."""
    items = list(field_urgencies)
    gradable = [u for u in items if u != Urgency.UNGRADABLE]
    return max(gradable) if gradable else worst(items)


def patient_urgency(eye_urgencies: Iterable[Urgency]) -> Urgency:
    """Worst eye. An ungradable eye with a negative fellow eye makes the patient ungradable."""
    return worst(eye_urgencies)


@dataclass(frozen=True)
class Guidance:
    """Guideline text for one result under one programme, worded as guidance."""

    programme: str
    category: str  # the programme's own grade label (e.g. "R1", "Moderate NPDR")
    action: str
    caveat: str = ""


PROGRAMMES = ("US (ADA / AAO)", "UK (NHS DESP)")

_US_ACTIONS = {
    0: "Guideline: rescreen in 1-2 years.",
    1: "Guideline: rescreen yearly.",
    2: "Guideline: refer to an eye-care professional within 3-6 months.",
    3: "Guideline: refer immediately.",
    4: "Guideline: refer immediately.",
}
_UK_R_GRADE = {0: "R0", 1: "R1", 2: "R1", 3: "R2", 4: "R3A"}
_UK_ACTIONS = {
    "R0": "Guideline: routine recall (2-yearly in England after two consecutive R0 screens, "
          "since Oct 2023; otherwise annual).",
    "R1": "Guideline: routine annual recall (background retinopathy, M0).",
    "R2": "Guideline: routine referral to hospital eye service, to be seen within 13 weeks.",
    "R3A": "Guideline: urgent referral to hospital eye service.",
}
_UK_CAVEAT = ("ICDR-to-NHS mapping is approximate (ICDR 1-2 ~ R1, 3 ~ R2, 4 ~ R3A); maculopathy "
              "(M0/M1) is not assessed by this model.")
_UNGRADABLE = {
    PROGRAMMES[0]: Guidance(PROGRAMMES[0], "Ungradable",
                            "Re-image, or refer for a standard eye examination."),
    PROGRAMMES[1]: Guidance(PROGRAMMES[1], "U", "Re-image, or refer for slit-lamp examination."),
}


def follow_up(grade: int | None, programme: str = PROGRAMMES[0], *, gradable: bool = True) -> Guidance:
    """Follow-up guidance. "Rescreen" applies only to a gradable, negative result."""
    if programme not in PROGRAMMES:
        raise ValueError(f"Unknown programme {programme!r}; choose one of {PROGRAMMES}")
    if not gradable or grade is None:
        return _UNGRADABLE[programme]
    if not 0 <= grade <= 4:
        raise ValueError(f"ICDR grade must be 0-4, got {grade}")
    if programme == PROGRAMMES[0]:
        return Guidance(programme, GRADE_NAMES[grade], _US_ACTIONS[grade])
    r_grade = _UK_R_GRADE[grade]
    return Guidance(programme, r_grade, _UK_ACTIONS[r_grade], _UK_CAVEAT)
