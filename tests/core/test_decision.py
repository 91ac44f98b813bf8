"""core.grading.decide: the invariants of issue 12 hold for every probability vector, operating
point and set of ordinal cut points hypothesis can find."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.grading import (
    PROGRAMMES,
    REVIEW_CONFIDENCE,
    Decision,
    Thresholds,
    Urgency,
    decide,
    decide_grade,
    follow_up,
    near_chance,
    p_referable,
    p_vision_threatening,
    ungradable,
    urgency_of,
    worklist_rank,
)

URGENT_WORDS = ("refer immediately", "urgent referral")


@st.composite
def probability_vectors(draw) -> list[float]:
    """Random simplex points, including exact ties, zeros and near-uniform vectors."""
    raw = draw(st.lists(st.one_of(st.just(0.0), st.just(1.0),
                                  st.floats(0.0, 1.0, allow_nan=False)), min_size=5, max_size=5))
    if sum(raw) == 0:
        raw = [1.0] * 5
    total = sum(raw)
    return [x / total for x in raw]


thresholds_st = st.floats(0.0, 1.0, allow_nan=False)
cuts_st = st.one_of(st.none(), st.lists(st.floats(0.0, 4.0, allow_nan=False), min_size=4,
                                        max_size=4).map(lambda c: tuple(sorted(c))))
quality_st = st.sampled_from(["good", "usable"])


def check_invariants(d: Decision, probs: list[float], rule: Thresholds) -> None:
    assert d.gradable and 0 <= d.grade <= 4
    # the flags, decided at the operating thresholds
    assert d.vision_threatening == (p_vision_threatening(probs) >= rule.vision_threatening)
    assert d.referable == (d.vision_threatening or p_referable(probs) >= rule.referable)
    # vtDR implies referable; referable iff grade >= 2; vtDR iff grade >= 3 (no DME output)
    assert not d.vision_threatening or d.referable
    assert d.referable == (d.grade >= 2)
    assert d.vision_threatening == (d.grade >= 3)
    # urgency and guidance follow the grade and the flags
    assert d.urgency == urgency_of(d.grade, gradable=True) == urgency_of(
        d.grade, gradable=True, referable=d.referable, vision_threatening=d.vision_threatening)
    us = d.guidance(PROGRAMMES[0]).action
    assert us == follow_up(d.grade).action
    assert ("rescreen" in us) == (not d.referable)  # rescreen only for a negative result
    assert ("immediately" in us) == bool(d.vision_threatening)
    uk = d.guidance(PROGRAMMES[1])
    assert (uk.category in ("R0", "R1")) == (not d.referable) or d.grade == 2  # ICDR 2 ~ R1
    assert any(w in uk.action.lower() for w in URGENT_WORDS) == (d.grade == 4)
    assert d.headline.startswith("Vision-threatening") == d.vision_threatening
    assert d.headline.startswith("Not referable") == (not d.referable)
    assert d.confidence == pytest.approx(probs[d.grade])
    # the grade: the most probable one the flags allow (argmax), or the clamped cut-point grade
    band = [g for g in range(5) if (g >= 2) == d.referable and (g >= 3) == d.vision_threatening]
    assert d.grade in band
    if rule.grade_cuts is None or (d.vision_threatening and rule.vt_grade_by_probability):
        assert probs[d.grade] == max(probs[g] for g in band)
    else:
        ordinal = decide_grade(probs, rule.grade_cuts)
        assert d.grade == min(max(ordinal, band[0]), band[-1])


@settings(max_examples=600, deadline=None)
@given(probability_vectors(), thresholds_st, thresholds_st, cuts_st, quality_st, st.booleans(),
       st.booleans())
def test_every_decision_is_coherent(probs, t_ref, t_vt, cuts, quality, chance, vt_by_p):
    rule = Thresholds(t_ref, t_vt, cuts, vt_grade_by_probability=vt_by_p)
    d = decide(probs, rule, quality_level=quality, near_chance=chance)
    check_invariants(d, probs, rule)
    # review: fragile answers are flagged, sound ones are not
    fragile = (abs(p_referable(probs) - t_ref) < 0.05 or abs(p_vision_threatening(probs) - t_vt)
               < 0.05 or probs[d.grade] < REVIEW_CONFIDENCE or quality == "usable" or chance)
    assert d.review == fragile
    # a routine result that needs review sorts above every routine one, below ungradable
    rank = worklist_rank(d.urgency, d.review)
    if d.review and d.urgency < Urgency.UNGRADABLE:
        assert worklist_rank(Urgency.MILD, False) < rank < worklist_rank(Urgency.UNGRADABLE, False)


def test_the_reported_contradictions_cannot_happen():
    # issue 12: "vision-threatening YES, referable NO, grade Mild NPDR, rescreen yearly"
    # (demo-retfound: temperature 20 makes every grade ~20%; thresholds 0.5985 / 0.3985)
    flat = [0.201, 0.199, 0.2, 0.2, 0.2]
    d = decide(flat, Thresholds(0.5985, 0.3985))
    assert (d.vision_threatening, d.referable, d.grade) == (True, True, 3)
    assert "low confidence" in "; ".join(d.review_reasons)
    assert any("within" in r for r in d.review_reasons)
    # "refer urgently" beside "Moderate NPDR ... within 3-6 months" (ordinal cut points)
    d = decide([0.05, 0.1, 0.5, 0.05, 0.3], Thresholds(0.32, 0.108, (0.56, 1.18, 2.8, 2.87)))
    assert d.vision_threatening and d.grade >= 3 and "immediately" in d.guidance().action


def test_a_small_threshold_is_quoted_with_a_third_decimal():
    # demo-lora 0.2.0 on 687_right read "p(vision-threatening) 0.00 is within 0.05 of its
    # threshold 0.05": true of 0.002 and 0.046, but it reads as a contradiction
    d = decide([0.97, 0.018, 0.01, 0.001, 0.001], Thresholds(0.19, 0.046))
    vt_reason = next(r for r in d.review_reasons if r.startswith("p(vision-threatening)"))
    assert vt_reason == "p(vision-threatening) 0.002 is within 0.05 of its threshold 0.046"
    d = decide([0.3, 0.1, 0.2, 0.2, 0.2], Thresholds(0.62, 0.5))
    assert "p(referable) 0.60 is within 0.05 of its threshold 0.620" in d.review_reasons
    # the Grade card's "p = ... (threshold ...)" line uses the same format: 40_left on
    # eyepacs-lite0 read "p = 0.09 (threshold 0.09)" under a "no"
    from core.grading import format_probability
    assert (format_probability(0.0914), format_probability(0.0923)) == ("0.091", "0.092")
    assert format_probability(0.35) == "0.35"


def test_p_and_its_threshold_are_quoted_on_the_right_side_of_each_other():
    from core.grading import format_against
    # 40_left on eyepacs-lite0: vtDR threshold 0.125 read "0.12" on the card, 0.125 in the CSV
    assert format_against(0.022, 0.125) == ("0.022", "0.125")
    assert format_against(0.30, 0.125) == ("0.30", "0.125")
    assert format_against(0.0914, 0.092) == ("0.091", "0.092")
    assert format_against(0.1249, 0.125) == ("0.12", "0.125")  # already on the right side
    # rounded to 2 or 3 decimals these would read as equal to, or past, the threshold
    assert format_against(0.1259, 0.126) == ("0.1259", "0.1260")
    assert format_against(0.0921, 0.092) == ("0.0921", "0.0920")
    assert format_against(0.6196, 0.62) == ("0.6196", "0.6200")
    assert format_against(0.125, 0.125) == ("0.125", "0.125")
    d = decide([0.5, 0.1, 0.2, 0.1, 0.1], Thresholds(0.4004, 0.19))
    assert "p(referable) 0.4000 is within 0.05 of its threshold 0.4004" in d.review_reasons


def test_severe_npdr_or_pdr_by_the_more_probable_when_the_bundle_says_so():
    # 687_right on eyepacs-lite0: 70% on severe NPDR, 5% on PDR, E[grade] past the 3/4 cut point
    probs = [0.1, 0.1, 0.05, 0.7, 0.05]
    cuts = (0.99, 1.33, 1.85, 2.25)
    assert decide(probs, Thresholds(0.09, 0.12, cuts)).grade == 4  # "PDR, probability 5%"
    d = decide(probs, Thresholds(0.09, 0.12, cuts, vt_grade_by_probability=True))
    assert (d.grade, d.confidence) == (3, 0.7)
    # below the vtDR band the cut points still decide (grade 1 is served, not argmax's 0)
    mild = [0.7, 0.25, 0.05, 0.0, 0.0]
    assert decide(mild, Thresholds(0.09, 0.12, (0.3, 1.33, 1.85, 2.25),
                                   vt_grade_by_probability=True)).grade == 1


def test_ungradable_has_no_grade_and_no_flags():
    for d in (ungradable(), ungradable(not_fundus=True)):
        assert (d.grade, d.referable, d.vision_threatening) == (None, None, None)
        assert d.urgency == Urgency.UNGRADABLE and not d.gradable
        assert "Re-image" in d.guidance().action
    assert ungradable(not_fundus=True).headline == "Not a fundus photograph - check the upload"
    assert ungradable().headline == "Ungradable - re-image or refer"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        decide([0.5, 0.5])
    with pytest.raises(ValueError):
        decide([float("nan"), 0, 0, 0, 1])
    with pytest.raises(ValueError):
        decide([0.2] * 5, quality_level="reject")


def test_near_chance_bundles():
    assert near_chance({})  # no validation metrics: no vote, no reassurance
    assert near_chance({"referable": {"auroc": 0.607}, "kappa_quadratic": 0.04})
    assert not near_chance({"referable": {"auroc": 0.979}, "kappa_quadratic": 0.865})


def test_a_demo_bundle_never_reassures():
    confident_no_dr = [0.97, 0.02, 0.01, 0.0, 0.0]
    assert decide(confident_no_dr, Thresholds(0.5, 0.5)).review_reasons == ()
    d = decide(confident_no_dr, Thresholds(0.5, 0.5), demo=True)
    assert (d.grade, d.referable) == (0, False)  # the answer itself is unchanged
    assert d.review_reasons == ("demo model: trained on synthetic images only",)
