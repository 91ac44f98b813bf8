"""Rows of the Compare-tiers table and the agreement rule, kept free of widgets.

Agreement is only claimed between tiers that earn a vote: not a demo model, and above chance
on its own validation data (core.grading.near_chance). Two coin-flip tiers whose p(referable)
lands on 0.599 against a 0.598 threshold do not "agree" with anything (issue 12).
"""

from __future__ import annotations

from typing import Any

from core.bundle import Bundle
from core.grading import (
    DME_CELL_NOT_ASSESSED,
    DME_CELL_NOT_GRADED,
    GRADE_NAMES,
    near_chance_reason,
)
from dashboard.components.analysis import Analysis
from dashboard.components.bundles import TIER_NAMES

DISAGREE = "Tiers disagree on the referable decision: send to human review."
TOO_FEW = ("No agreement claimed: fewer than two validated tiers (above chance on their own "
           "validation data, not demo models) graded this photo.")


def not_counted_reason(bundle: Bundle) -> str | None:
    """Why a tier gets no vote on agreement (None: it counts)."""
    m = bundle.manifest
    if m.demo:
        return "demo model"
    return near_chance_reason(m.evaluation)


def _voters(analyses: list[Analysis]) -> list[Analysis]:
    """Counted tiers that graded the photo."""
    return [a for a in analyses if not_counted_reason(a.bundle) is None and a.ok
            and a.prediction is not None and a.prediction.gradable]


def referable_disagreement(analyses: list[Analysis]) -> bool:
    """True when counted tiers that graded the photo differ on 'referable'."""
    return len({a.prediction.referable for a in _voters(analyses)}) > 1


def referable_agreement(analyses: list[Analysis]) -> str | None:
    """'referable' / 'not referable' only when at least two tiers are counted, every counted
    tier graded the photo, and they all agree."""
    counted = [a for a in analyses if not_counted_reason(a.bundle) is None]
    voters = _voters(analyses)
    if len(voters) < 2 or len(voters) != len(counted):
        return None
    votes = {a.prediction.referable for a in voters}
    if len(votes) != 1:
        return None
    return "referable" if votes.pop() else "not referable"


def compare_row(a: Analysis, params: int | None) -> dict[str, Any]:
    m = a.bundle.manifest
    reason = not_counted_reason(a.bundle)
    row: dict[str, Any] = {  # the decision first; why a tier has no vote after it
        "bundle": f"{m.name} {m.version}", "tier": TIER_NAMES.get(m.tier, m.tier),
        "grade": "", "referable": "", "p_referable": None,
        "DME": DME_CELL_NOT_ASSESSED if not m.has_dme else "", "needs review": "",
        "counted for agreement": "yes" if reason is None else f"no - {reason}",
        "result": "", "demo": "DEMO" if m.demo else "", "latency_ms": None,
        "parameters": params}
    if not a.ok:
        row["result"] = f"error: {a.error}"
        return row
    p = a.prediction
    row["latency_ms"] = round(p.latency_ms, 1)
    if not p.gradable:
        row["DME"] = DME_CELL_NOT_GRADED if m.has_dme else DME_CELL_NOT_ASSESSED
        row["result"] = p.decision.headline if p.decision is not None else \
            "Ungradable - re-image or refer"
        return row
    row.update(result=p.decision.headline if p.decision is not None else "graded",
               grade=f"{p.grade} {GRADE_NAMES[p.grade]}",
               referable="YES" if p.referable else "no", p_referable=round(p.p_referable, 3),
               DME=dme_column(p),
               **{"needs review": "; ".join(p.review_reasons)})
    return row


def dme_column(p: Any) -> str:
    """The Compare DME cell of a graded photo: YES / no with p(DME), or not assessed (a tier
    without a DME output must not look like a "no")."""
    if p.dme is None or p.p_dme is None:
        return DME_CELL_NOT_ASSESSED
    return f"{'YES' if p.dme else 'no'} (p {p.p_dme:.2f})"


def grey_uncounted(row: Any) -> list[str]:
    """pandas Styler row function: tiers without a vote in grey."""
    grey = str(row.get("counted for agreement", "yes")) != "yes"
    return ["color: #8a8a8a; font-style: italic" if grey else "" for _ in row]
