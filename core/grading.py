"""ICDR grades, composite results, worst-eye rules, follow-up guidance, and THE decision.

Everything here follows ../shared/CLINICAL.md. `decide()` is the only place that turns
calibrated probabilities into a result; every page, the screener, the exports and the training
metrics call it, so one photo can never get a grade on the card and a contradicting flag or
guideline elsewhere.

The rule of `decide()` (issue 12): the flags are decided first, at the bundle's operating
thresholds (chosen on validation for sensitivity), because they are what a screening programme
acts on: vision-threatening if P(grade >= 3) reaches its threshold, referable if P(grade >= 2)
reaches its threshold or the photo is vision-threatening. The flags then fix the band the grade
must lie in (vtDR: 3-4; referable: 2; neither: 0-1). Inside that band an argmax bundle takes
the most probable grade; an ordinal bundle (cut points on the expected grade, tuned for kappa)
takes its cut-point grade moved to the nearest grade of the band, so where the two rules agree
nothing changes; an ordinal bundle with `vt_grade_by_probability` takes the more probable of
severe NPDR and PDR inside the vtDR band (its 3/4 cut point rested on a handful of calibration
photos and served "PDR, probability 5%" beside 70% on severe NPDR). A bundle with a DME output
adds one more flag: DME at its own threshold makes the photo referable whatever the grade
(CLINICAL.md: referable = grade >= 2 and/or DME); it never moves the grade, and it does not make
a photo vision-threatening, because no bundle can tell centre involvement (DME_SCOPE). Urgency
and guideline text are then functions of that one grade and DME, so they cannot contradict
them. A result is flagged for human review when it is fragile (see `decide`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

GRADE_NAMES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")
REFERABLE_MIN_GRADE = 2  # "more than mild" (mtmDR): grade >= 2 and/or DME
VISION_THREATENING_MIN_GRADE = 3  # vtDR: grade >= 3 and/or centre-involving DME
DEMO_REVIEW_REASON = "demo model: trained on synthetic images only"
DME_NOT_ASSESSED = "DME: not assessed (this model has no macular-oedema output)"
DME_NOT_GRADED = "DME: not graded (ungradable photo)"
# What a DME output can and cannot tell (issue 33): Messidor-2's adjudicated DME and IDRiD's
# risk 2 are both "hard exudates within one disc diameter of the fovea", not centre involvement
DME_SCOPE = ("DME = hard exudates within one disc diameter of the fovea (photographic); "
             "centre involvement is not assessed, so DME makes an eye referable, "
             "not vision-threatening")


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
    """Urgency of one field. The flags win over the grade when given; results of `decide()`
    always agree with their grade, so this only matters for hand-made rows."""
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


_US_DME_ACTION = ("Guideline: refer to an ophthalmologist promptly (macular oedema suggested; "
                  "ADA: any macular oedema is referred).")
_UK_M1_ACTION = ("Guideline: routine referral to hospital eye service, to be seen within 13 "
                 "weeks (M1 maculopathy).")
_UK_DME_CAVEAT = ("ICDR-to-NHS mapping is approximate (ICDR 1-2 ~ R1, 3 ~ R2, 4 ~ R3A); M0/M1 "
                  "comes from the model's DME output (exudates near the fovea), not from "
                  "graded maculopathy features.")


def follow_up(grade: int | None, programme: str = PROGRAMMES[0], *, gradable: bool = True,
              dme: bool | None = None) -> Guidance:
    """Follow-up guidance. "Rescreen" applies only to a gradable, negative result; a DME
    result (True/False; None: not assessed) refers a grade 0-2 eye as macular oedema."""
    if programme not in PROGRAMMES:
        raise ValueError(f"Unknown programme {programme!r}; choose one of {PROGRAMMES}")
    if not gradable or grade is None:
        return _UNGRADABLE[programme]
    if not 0 <= grade <= 4:
        raise ValueError(f"ICDR grade must be 0-4, got {grade}")
    if programme == PROGRAMMES[0]:
        if dme and grade < VISION_THREATENING_MIN_GRADE:
            return Guidance(programme, f"{GRADE_NAMES[grade]} with DME", _US_DME_ACTION)
        return Guidance(programme, GRADE_NAMES[grade], _US_ACTIONS[grade])
    r_grade = _UK_R_GRADE[grade]
    if dme is None:
        return Guidance(programme, r_grade, _UK_ACTIONS[r_grade], _UK_CAVEAT)
    category = f"{r_grade} M{int(dme)}"
    action = _UK_M1_ACTION if dme and r_grade in ("R0", "R1") else _UK_ACTIONS[r_grade]
    return Guidance(programme, category, action, _UK_DME_CAVEAT)


DME_CELL_NOT_ASSESSED, DME_CELL_NOT_GRADED = "not assessed", "not graded"  # tables, CSV, PDF


def dme_cell(dme: bool | None, assessed: bool) -> str:
    """yes / no; "not assessed" where the bundle has no DME output, "not graded" where it had
    one but nothing could be graded (a missing output must never read as "no")."""
    if dme is not None:
        return "yes" if dme else "no"
    return DME_CELL_NOT_GRADED if assessed else DME_CELL_NOT_ASSESSED


def dme_statement(p_dme: float | None, dme: bool | None, threshold: float | None) -> str:
    """The card's DME line: yes / no with its probability and threshold; not assessed without a
    DME output (no threshold); not graded for a DME bundle's ungradable photo (the model's lack
    of an output must not be blamed for a bad photo)."""
    if threshold is None:
        return DME_NOT_ASSESSED
    if p_dme is None or dme is None:
        return DME_NOT_GRADED
    shown_p, shown_t = format_against(p_dme, threshold)
    verdict = "yes - refer" if dme else "no"
    return f"DME: {verdict} (p {shown_p}, threshold {shown_t})"


# ---------------------------------------------------------------- the decision

REVIEW_MARGIN = 0.05  # |p - operating threshold| below this: the flag could flip on a re-take
REVIEW_CONFIDENCE = 0.6  # probability of the decided grade below this: a person should look
NEAR_CHANCE_AUROC = 0.7  # referable AUROC on the bundle's own validation data
NEAR_CHANCE_KAPPA = 0.2  # quadratic-weighted kappa on the bundle's own validation data
NOT_FUNDUS_HEADLINE = "Not a fundus photograph - check the upload"
VT_GRADE_BY_PROBABILITY_WORDS = "; severe NPDR vs PDR: the more probable of the two"


@dataclass(frozen=True)
class Thresholds:
    """A bundle's operating point: what `decide()` needs besides the probabilities."""

    referable: float = 0.5  # on P(grade >= 2)
    vision_threatening: float = 0.5  # on P(grade >= 3)
    grade_cuts: tuple[float, ...] | None = None  # ordinal bundles: 4 cut points on E[grade]
    # ordinal bundles: severe NPDR vs PDR by the more probable of the two, not by the cut point
    vt_grade_by_probability: bool = False
    dme: float | None = None  # on p(DME); None: the bundle has no DME output


@dataclass(frozen=True)
class Decision:
    """One photo's result. Invariants (tested): vtDR implies referable; referable iff
    grade >= 2 or DME; vtDR iff grade >= 3; urgency and guidance follow the grade and DME; no
    grade, no flags when ungradable. dme is None when the bundle has no DME output."""

    grade: int | None
    referable: bool | None
    vision_threatening: bool | None
    urgency: Urgency
    confidence: float | None  # probability of the decided grade
    review_reasons: tuple[str, ...] = ()
    not_fundus: bool = False
    dme: bool | None = None

    @property
    def gradable(self) -> bool:
        return self.grade is not None

    @property
    def referable_for_dme_only(self) -> bool:
        """Referable on macular oedema alone (grade 0-1): the headline must say why."""
        return bool(self.dme) and self.grade is not None and self.grade < REFERABLE_MIN_GRADE

    @property
    def review(self) -> bool:
        return bool(self.review_reasons)

    @property
    def headline(self) -> str:
        if self.not_fundus:
            return NOT_FUNDUS_HEADLINE
        if self.referable_for_dme_only:
            return DME_HEADLINE
        return HEADLINES[self.urgency]

    def guidance(self, programme: str = PROGRAMMES[0]) -> Guidance:
        return follow_up(self.grade, programme, gradable=self.gradable, dme=self.dme)


HEADLINES = {
    Urgency.VISION_THREATENING: "Vision-threatening DR suggested - review and refer urgently",
    Urgency.REFERABLE: "Referable DR suggested - review for referral",
    Urgency.UNGRADABLE: "Ungradable - re-image or refer",
    Urgency.MILD: "Not referable (mild NPDR suggested)",
    Urgency.NONE: "Not referable (no DR suggested)",
}


DME_HEADLINE = "Referable: macular oedema suggested - review for referral"


def ungradable(*, not_fundus: bool = False) -> Decision:
    """The result of a photo that failed the quality gate (or is not a fundus at all)."""
    return Decision(None, None, None, Urgency.UNGRADABLE, None, (), not_fundus)


def grade_band(p_ref: float, p_vt: float, thresholds: Thresholds) -> range:
    """The grades the flags allow (vtDR: 3-4, referable: 2, neither: 0-1). Training tunes the
    ordinal cut points inside these bands, because serving clips every grade into them."""
    if p_vt >= thresholds.vision_threatening:
        return range(VISION_THREATENING_MIN_GRADE, len(GRADE_NAMES))
    if p_ref >= thresholds.referable:
        return range(REFERABLE_MIN_GRADE, VISION_THREATENING_MIN_GRADE)
    return range(0, REFERABLE_MIN_GRADE)


def format_probability(x: float) -> str:
    """A probability as review reasons and result cards quote it: a third decimal under 0.1, so
    0.091 against a threshold of 0.092 does not read as "0.09 (threshold 0.09)" beside a "no"."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def format_against(p: float, threshold: float) -> tuple[str, str]:
    """(p, threshold) as a card quotes them side by side. The threshold always has three
    decimals, as the worklist CSV and PDF record it (0.125 never reads "0.12"); where rounding
    would put p level with it or on its wrong side, both get more ("0.1259" under "0.1260", not
    "0.13" beside a "no")."""
    shown_p, shown_t = format_probability(p), f"{threshold:.3f}"
    for digits in (3, 4, 5, 6):
        q, t = float(shown_p), float(shown_t)
        if (q > t, q < t) == (p > threshold, p < threshold):
            break
        shown_p, shown_t = f"{p:.{digits}f}", f"{threshold:.{digits}f}"
    return shown_p, shown_t


def _near_threshold(label: str, p: float, threshold: float, margin: float) -> str:
    shown_p, shown_t = format_against(p, threshold)
    return f"{label} {shown_p} is within {margin:.2f} of its threshold {shown_t}"


def decide(probs: Sequence[float], thresholds: Thresholds = Thresholds(), *,
           quality_level: str = "good", near_chance: bool = False, demo: bool = False,
           margin: float = REVIEW_MARGIN, min_confidence: float = REVIEW_CONFIDENCE,
           p_dme: float | None = None) -> Decision:
    """The one decision for a gradable photo (rule in the module docstring).

    Review reasons: a probability within `margin` of an operating threshold, the decided grade's
    probability below `min_confidence`, a "usable" (not "good") photo, a bundle near chance on
    its own validation data, a demo bundle (trained on synthetic images: a confident "No DR"
    from it must not reassure anyone about a real eye). Tier disagreement is added where several
    bundles are compared.
    """
    p = [float(x) for x in probs]
    if len(p) != len(GRADE_NAMES) or not all(math.isfinite(x) and x >= 0 for x in p):
        raise ValueError(f"decide() needs {len(GRADE_NAMES)} finite probabilities, got {p}")
    if quality_level == "reject":
        raise ValueError("A rejected photo has no decision from probabilities; use ungradable()")
    p_ref, p_vt = p_referable(p), p_vision_threatening(p)
    band = grade_band(p_ref, p_vt, thresholds)
    vt, ref = band[0] >= VISION_THREATENING_MIN_GRADE, band[0] >= REFERABLE_MIN_GRADE
    if thresholds.grade_cuts is None or (vt and thresholds.vt_grade_by_probability):
        grade = max(band, key=lambda g: (p[g], -g))
    else:
        grade = min(max(decide_grade(p, thresholds.grade_cuts), band[0]), band[-1])
    reasons = []
    if abs(p_ref - thresholds.referable) < margin:
        reasons.append(_near_threshold("p(referable)", p_ref, thresholds.referable, margin))
    if abs(p_vt - thresholds.vision_threatening) < margin:
        reasons.append(_near_threshold("p(vision-threatening)", p_vt,
                                       thresholds.vision_threatening, margin))
    if p[grade] < min_confidence:
        reasons.append(f"low confidence in the grade ({p[grade]:.2f} < {min_confidence:.2f})")
    dme = _dme_flag(p_dme, thresholds.dme)
    if dme is not None and abs(p_dme - thresholds.dme) < margin:
        reasons.append(_near_threshold("p(DME)", p_dme, thresholds.dme, margin))
    if quality_level == "usable":
        reasons.append("photo quality only usable (some quality problems)")
    if near_chance:
        reasons.append("model near chance on its own validation data")
    if demo:
        reasons.append(DEMO_REVIEW_REASON)
    ref = ref or bool(dme)
    urgency = urgency_of(grade, gradable=True, referable=ref, vision_threatening=vt)
    return Decision(grade, ref, vt, urgency, p[grade], tuple(reasons), dme=dme)


def _dme_flag(p_dme: float | None, threshold: float | None) -> bool | None:
    """DME at the bundle's own threshold; None (not assessed) without an output or threshold."""
    if p_dme is None or threshold is None:
        return None
    if not (math.isfinite(p_dme) and 0.0 <= p_dme <= 1.0):
        raise ValueError(f"p(DME) must be a probability, got {p_dme}")
    return p_dme >= threshold


def headline_figures(evaluation: dict) -> tuple[float | None, float | None]:
    """(referable AUROC, quadratic kappa) a bundle is judged by: its own recipe's cross-
    validation on photos used for neither training nor calibration when it carries one
    (training.evaluation.crossval), else its validation figures."""
    results = (evaluation.get("cross_validation") or {}).get("results") or {}
    own = next(iter(results.values()), None)
    if isinstance(own, dict):
        return ((own.get("referable_auroc") or {}).get("value"),
                (own.get("kappa_quadratic") or {}).get("value"))
    return (evaluation.get("referable") or {}).get("auroc"), evaluation.get("kappa_quadratic")


def near_chance(evaluation: dict) -> bool:
    """True when a bundle's own validation metrics are missing or barely above chance: its
    answers must not reassure anyone, nor count towards an agreement between tiers."""
    auroc, kappa = headline_figures(evaluation)
    if auroc is None and kappa is None:
        return True
    return ((auroc is not None and auroc < NEAR_CHANCE_AUROC)
            or (kappa is not None and kappa < NEAR_CHANCE_KAPPA))


def near_chance_reason(evaluation: dict) -> str | None:
    """Why near_chance() holds, naming the figures it was judged by and their source
    ("near chance in its cross-validation (kappa 0.17 < 0.20)"); None when it does not."""
    if not near_chance(evaluation):
        return None
    auroc, kappa = headline_figures(evaluation)
    if auroc is None and kappa is None:
        return "no validation metrics"
    source = ("its cross-validation" if (evaluation.get("cross_validation") or {}).get("results")
              else "its validation data")
    low = []
    if auroc is not None and auroc < NEAR_CHANCE_AUROC:
        low.append(f"AUROC {auroc:.2f} < {NEAR_CHANCE_AUROC:.2f}")
    if kappa is not None and kappa < NEAR_CHANCE_KAPPA:
        low.append(f"kappa {kappa:.2f} < {NEAR_CHANCE_KAPPA:.2f}")
    return f"near chance on {source}" + (f" ({', '.join(low)})" if low else "")


def worklist_rank(urgency: Urgency, review: bool) -> float:
    """Sort key (higher first): a routine result that needs review sorts above routine ones,
    below ungradable."""
    if review and urgency < Urgency.UNGRADABLE:
        return Urgency.MILD + 0.5
    return float(urgency)
