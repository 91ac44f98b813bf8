"""Rows of the Compare-tiers table and the disagreement rule, kept free of widgets."""

from __future__ import annotations

from typing import Any

from core.grading import GRADE_NAMES
from dashboard.components.analysis import Analysis
from dashboard.components.bundles import TIER_NAMES

DISAGREE = "Tiers disagree on the referable decision: send to human review."


def referable_disagreement(analyses: list[Analysis]) -> bool:
    """True when gradable results of different bundles differ on 'referable'."""
    votes = {a.prediction.referable for a in analyses
             if a.ok and a.prediction is not None and a.prediction.gradable}
    return len(votes) > 1


def referable_agreement(analyses: list[Analysis]) -> str | None:
    """'referable' / 'not referable' when every bundle graded the photo and all agree."""
    preds = [a.prediction for a in analyses if a.ok and a.prediction is not None]
    if not preds or len(preds) != len(analyses) or not all(p.gradable for p in preds):
        return None
    votes = {p.referable for p in preds}
    if len(votes) != 1:
        return None
    return "referable" if votes.pop() else "not referable"


def compare_row(a: Analysis, params: int | None) -> dict[str, Any]:
    m = a.bundle.manifest
    row: dict[str, Any] = {
        "bundle": f"{m.name} {m.version}", "tier": TIER_NAMES.get(m.tier, m.tier),
        "demo": "DEMO" if m.demo else "", "result": "", "grade": "", "referable": "",
        "p_referable": None, "latency_ms": None, "parameters": params}
    if not a.ok:
        row["result"] = f"error: {a.error}"
        return row
    p = a.prediction
    row["latency_ms"] = round(p.latency_ms, 1)
    if not p.gradable:
        row["result"] = "Ungradable - re-image or refer"
        return row
    row.update(result="graded", grade=f"{p.grade} {GRADE_NAMES[p.grade]}",
               referable="YES" if p.referable else "no", p_referable=round(p.p_referable, 3))
    return row
