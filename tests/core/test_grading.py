"""CLINICAL.md rules, encoded as data, checked one by one."""

from __future__ import annotations

import pytest

from core.grading import (
    DME_HEADLINE,
    DME_NOT_ASSESSED,
    DME_NOT_GRADED,
    HEADLINES,
    PROGRAMMES,
    Thresholds,
    Urgency,
    decide,
    dme_cell,
    dme_statement,
    eye_urgency,
    follow_up,
    p_referable,
    p_vision_threatening,
    patient_urgency,
    ungradable,
    urgency_of,
)

U = Urgency


@pytest.mark.parametrize("grade,expected", [(0, U.NONE), (1, U.MILD), (2, U.REFERABLE),
                                            (3, U.VISION_THREATENING), (4, U.VISION_THREATENING)])
def test_urgency_from_grade(grade, expected):
    assert urgency_of(grade, gradable=True) == expected


def test_ungradable_is_never_a_grade():
    assert urgency_of(0, gradable=False) == U.UNGRADABLE
    assert urgency_of(None, gradable=True) == U.UNGRADABLE


def test_operating_point_flags_override_argmax():
    assert urgency_of(1, gradable=True, referable=True) == U.REFERABLE
    assert urgency_of(2, gradable=True, referable=False, vision_threatening=False) == U.MILD


def test_worklist_order():
    assert sorted([U.NONE, U.VISION_THREATENING, U.MILD, U.UNGRADABLE, U.REFERABLE],
                  reverse=True) == [U.VISION_THREATENING, U.REFERABLE, U.UNGRADABLE, U.MILD, U.NONE]


def test_eye_is_worst_gradable_field():
    assert eye_urgency([U.UNGRADABLE, U.NONE]) == U.NONE
    assert eye_urgency([U.MILD, U.REFERABLE]) == U.REFERABLE
    assert eye_urgency([U.UNGRADABLE, U.UNGRADABLE]) == U.UNGRADABLE


def test_patient_is_worst_eye_and_ungradable_beats_negative_fellow():
    assert patient_urgency([U.UNGRADABLE, U.NONE]) == U.UNGRADABLE
    assert patient_urgency([U.UNGRADABLE, U.MILD]) == U.UNGRADABLE
    assert patient_urgency([U.UNGRADABLE, U.REFERABLE]) == U.REFERABLE


def test_composite_probabilities():
    probs = [0.1, 0.2, 0.3, 0.25, 0.15]
    assert p_referable(probs) == pytest.approx(0.7)
    assert p_vision_threatening(probs) == pytest.approx(0.4)


def test_us_guidance():
    us = PROGRAMMES[0]
    assert "1-2 years" in follow_up(0, us).action
    assert "yearly" in follow_up(1, us).action
    assert "3-6 months" in follow_up(2, us).action
    assert "immediately" in follow_up(3, us).action and "immediately" in follow_up(4, us).action
    ungradable = follow_up(0, us, gradable=False).action
    assert "rescreen" not in ungradable.lower() and "Re-image" in ungradable


def test_uk_guidance_with_mapping_caveat():
    uk = PROGRAMMES[1]
    assert [follow_up(g, uk).category for g in range(5)] == ["R0", "R1", "R1", "R2", "R3A"]
    assert "13 weeks" in follow_up(3, uk).action
    assert "urgent" in follow_up(4, uk).action
    assert "approximate" in follow_up(2, uk).caveat
    assert follow_up(None, uk, gradable=False).category == "U"
    with pytest.raises(ValueError):
        follow_up(1, "Mars")


# ---------------------------------------------------------------- DME output (issue 33)

MILD = (0.05, 0.85, 0.05, 0.03, 0.02)  # grade 1, far from every threshold
DME_RULE = Thresholds(0.5, 0.5, dme=0.3)


def test_dme_alone_makes_a_mild_photo_referable_not_vision_threatening():
    d = decide(MILD, DME_RULE, p_dme=0.8)
    assert (d.grade, d.dme, d.referable, d.vision_threatening) == (1, True, True, False)
    assert d.urgency == U.REFERABLE and d.referable_for_dme_only
    assert d.headline == DME_HEADLINE != HEADLINES[U.REFERABLE]
    assert not d.review_reasons  # 0.8 is far from 0.3
    assert "ophthalmologist" in d.guidance().action
    no = decide(MILD, DME_RULE, p_dme=0.1)
    assert (no.dme, no.referable, no.urgency) == (False, False, U.MILD)
    assert no.headline == HEADLINES[U.MILD] and "yearly" in no.guidance().action


def test_dme_not_assessed_without_an_output():
    for rule, p in ((Thresholds(0.5, 0.5), None), (Thresholds(0.5, 0.5), 0.9), (DME_RULE, None)):
        d = decide(MILD, rule, p_dme=p)
        assert d.dme is None and d.referable is False and d.urgency == U.MILD
    assert ungradable().dme is None


def test_dme_near_its_threshold_asks_for_review():
    d = decide(MILD, DME_RULE, p_dme=0.32)
    assert d.dme is True and any("p(DME)" in r for r in d.review_reasons)
    assert not any("p(DME)" in r for r in decide(MILD, DME_RULE, p_dme=0.6).review_reasons)
    with pytest.raises(ValueError):
        decide(MILD, DME_RULE, p_dme=1.5)


def test_follow_up_with_dme_both_programmes():
    us, uk = PROGRAMMES
    assert follow_up(1, us, dme=True).category == "Mild NPDR with DME"
    assert "ophthalmologist" in follow_up(0, us, dme=True).action
    assert follow_up(1, us, dme=False).action == follow_up(1, us).action  # rescreen yearly
    assert follow_up(3, us, dme=True).action == follow_up(3, us).action  # already immediate
    m1 = follow_up(1, uk, dme=True)
    assert m1.category == "R1 M1" and "routine referral" in m1.action and "M1" in m1.action
    assert "DME output" in m1.caveat
    assert follow_up(1, uk, dme=False).category == "R1 M0"
    assert follow_up(0, uk, dme=False).action == follow_up(0, uk).action
    assert "urgent" in follow_up(4, uk, dme=True).action  # R3A stays urgent
    assert follow_up(1, uk).category == "R1" and "not assessed" in follow_up(1, uk).caveat
    assert follow_up(None, us, gradable=False, dme=True).category == "Ungradable"


def test_dme_statement_and_cell():
    assert dme_statement(0.62, True, 0.21) == "DME: yes - refer (p 0.62, threshold 0.210)"
    assert dme_statement(0.1, False, 0.21).startswith("DME: no (p 0.10")
    assert dme_statement(None, None, None) == DME_NOT_ASSESSED
    assert dme_statement(0.9, None, None) == DME_NOT_ASSESSED
    assert dme_statement(None, None, 0.3) == DME_NOT_GRADED  # a DME bundle, ungradable photo
    assert [dme_cell(True, True), dme_cell(False, True), dme_cell(None, False),
            dme_cell(None, True)] == ["yes", "no", "not assessed", "not graded"]
