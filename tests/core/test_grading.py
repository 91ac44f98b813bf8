"""CLINICAL.md rules, encoded as data, checked one by one."""

from __future__ import annotations

import pytest

from core.grading import (
    PROGRAMMES,
    Urgency,
    eye_urgency,
    follow_up,
    p_referable,
    p_vision_threatening,
    patient_urgency,
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
