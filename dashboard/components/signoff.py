"""Clinician sign-off: accept or override the suggested grade, stored via core.store.

The model's output is a suggestion; the sign-off records who reviewed it and what they decided,
keyed by the photo's sha256 so earlier reviews of the same photo are shown again.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.errors import DRError
from core.grading import GRADE_NAMES
from core.predict import Prediction
from core.store import Store
from dashboard.components.database import open_store

UNGRADABLE_CHOICE = "Ungradable"
GRADE_CHOICES = tuple(f"{g} - {name}" for g, name in enumerate(GRADE_NAMES)) + (UNGRADABLE_CHOICE,)


@dataclass(frozen=True)
class SignOffInput:
    """What the clinician entered, validated."""

    decision: str  # "accept" | "override"
    final_grade: int | None
    reason: str
    clinician: str


def validate(prediction: Prediction, decision: str, choice: str, reason: str,
             clinician: str) -> SignOffInput | str:
    """The sign-off to store, or a message saying what is missing."""
    clinician, reason = clinician.strip(), reason.strip()
    if not clinician:
        return "Enter the reviewing clinician's name before signing off."
    if decision == "accept":
        return SignOffInput("accept", prediction.grade, reason, clinician)
    final = None if choice == UNGRADABLE_CHOICE else GRADE_CHOICES.index(choice)
    if not reason:
        return "An override needs a reason (e.g. 'IRMA in two quadrants: severe NPDR')."
    return SignOffInput("override", final, reason, clinician)


def _store() -> Store:
    """The server's one Store for this database (shared with the Batch page): reading the
    earlier sign-offs on every render takes no write lock and opens no new connection."""
    store = open_store()
    if isinstance(store, str):
        raise OSError(store)
    return store


def earlier_signoffs(image_hash: str) -> list | str:
    """Sign-offs stored for this photo, or an error message."""
    try:
        return list(_store().signoffs(image_hash=image_hash))
    except (DRError, ImportError, OSError) as exc:
        return f"Sign-offs unavailable: {exc}"


def save_signoff(prediction: Prediction, image_hash: str, image_name: str,
                 entry: SignOffInput, *, run_id: int | None = None) -> int | str:
    """Store the sign-off; run_id links it to a batch screening run (None on single photos)."""
    try:
        return _store().add_signoff(
            image_hash=image_hash, image_name=image_name, model=prediction.model,
            version=prediction.version, predicted_grade=prediction.grade,
            decision=entry.decision, final_grade=entry.final_grade, reason=entry.reason,
            clinician=entry.clinician, run_id=run_id)
    except (DRError, ImportError, OSError, ValueError) as exc:
        return f"Could not store the sign-off: {exc}"


def _grade_text(grade: int | None) -> str:
    return UNGRADABLE_CHOICE if grade is None else f"{grade} - {GRADE_NAMES[grade]}"


def earlier_signoffs_ui(image_hash: str) -> None:
    rows = earlier_signoffs(image_hash)
    if isinstance(rows, str):
        st.caption(rows)
        return
    if not rows:
        st.caption("No earlier sign-off for this photo.")
        return
    st.markdown(f"**Earlier sign-offs for this photo ({len(rows)})**")
    st.dataframe([{
        "when (UTC)": str(getattr(r, "created_at", "")),
        "clinician": r.clinician, "decision": r.decision,
        "model grade": _grade_text(r.predicted_grade), "final grade": _grade_text(r.final_grade),
        "reason": r.reason, "model": f"{r.model} {r.version}"} for r in rows],
        hide_index=True, width="stretch")


def signoff_ui(prediction: Prediction, image_hash: str, image_name: str, *, key: str,
               run_id: int | None = None) -> None:
    """Accept/override form; stores on submit and shows the stored row id. `prediction` only
    needs .grade, .model and .version (a stored core.store.ResultRow works too)."""
    st.markdown("##### Clinician sign-off")
    suggested = _grade_text(prediction.grade)
    with st.form(key=f"signoff-{key}", clear_on_submit=False):
        decision = st.radio("Decision", ("accept", "override"), horizontal=True,
                            format_func=lambda d: f"Accept suggestion ({suggested})"
                            if d == "accept" else "Override", key=f"decision-{key}")
        choice = st.selectbox("Final grade (for an override)", GRADE_CHOICES,
                              index=GRADE_CHOICES.index(suggested), key=f"final-{key}")
        reason = st.text_input("Reason (required for an override)", key=f"reason-{key}")
        clinician = st.text_input("Clinician name", key=f"clinician-{key}")
        submitted = st.form_submit_button("Sign off")
    if submitted:
        entry = validate(prediction, decision or "accept", choice or suggested, reason or "",
                         clinician or "")
        store_entry_ui(prediction, image_hash, image_name, entry, run_id=run_id,
                       done=lambda e: f"Sign-off stored ({{record}}): {e.decision}, final grade "
                                      f"{_grade_text(e.final_grade)}, by {e.clinician}.")
    earlier_signoffs_ui(image_hash)


def store_entry_ui(prediction: Prediction, image_hash: str, image_name: str, entry, *,
                   run_id: int | None, done) -> None:
    """Store a validated entry (or show why it is invalid), then say what was recorded;
    `done(entry)` gives the message, with `{record}` where the record number goes."""
    if isinstance(entry, str):
        st.error(entry)
        return
    stored = save_signoff(prediction, image_hash, image_name, entry, run_id=run_id)
    if isinstance(stored, str):
        st.error(stored)
    else:
        st.success(done(entry).replace("{record}", f"record {stored}"))
