"""Sign-off for a picture that is not a fundus photograph: record a wrong upload, nothing else.

Why not the usual accept/override form: there is no grade to accept, and a clinician "accepting"
the gate on a face or a document would look like a graded eye in the record. The store keeps
it as an override with no final grade and a fixed reason, so the audit trail reads plainly.
"""

from __future__ import annotations

import streamlit as st

from core.predict import Prediction
from dashboard.components.signoff import SignOffInput, earlier_signoffs_ui, store_entry_ui

WRONG_UPLOAD_REASON = "Wrong upload: not a fundus photograph"


def wrong_upload_entry(clinician: str) -> SignOffInput | str:
    """The sign-off to store, or what is missing."""
    if not clinician.strip():
        return "Enter the reviewing clinician's name before recording the wrong upload."
    return SignOffInput("override", None, WRONG_UPLOAD_REASON, clinician.strip())


def wrong_upload_ui(prediction: Prediction, image_hash: str, image_name: str, *, key: str,
                    run_id: int | None = None) -> None:
    """One button: confirm that this upload was the wrong picture."""
    st.markdown("##### Clinician sign-off")
    st.caption("No grade to accept: this picture is not a fundus photograph.")
    with st.form(key=f"wrong-upload-{key}", clear_on_submit=False):
        clinician = st.text_input("Clinician name", key=f"wrong-clinician-{key}")
        submitted = st.form_submit_button("Record as wrong upload (not a fundus photograph)")
    if submitted:
        store_entry_ui(prediction, image_hash, image_name, wrong_upload_entry(clinician or ""),
                       run_id=run_id,
                       done=lambda e: f"Recorded ({{record}}): {WRONG_UPLOAD_REASON}, by "
                                      f"{e.clinician}.")
    earlier_signoffs_ui(image_hash)
