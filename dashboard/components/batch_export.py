"""CSV and PDF downloads of a screening run, written by core.report into a temporary file.

Why through core.report: the research-use wording, the demo notice and the audit entry of every
export live there, so the page cannot produce an export without them. Every file is built only
when its button is clicked, so the audit trail records downloads, not page views. Clicking a
button does not rerun the page (on_click="ignore"): a rerun replaced every button's deferred
file, so a second download clicked straight after the first asked for a file that no longer
existed ("Deferred file ... not found", issue 12).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from core import report
from core.store import Store


def _via_temp(suffix: str, write: Callable[[Path], object]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="dr-export-") as tmp:
        path = Path(tmp) / f"export{suffix}"
        write(path)
        return path.read_bytes()


def csv_bytes(store: Store, run_id: int, per: str) -> bytes:
    """The run's worklist CSV, per "image" or per "patient"."""
    return _via_temp(".csv", lambda p: report.worklist_csv(store, run_id, p, per=per))


def pdf_bytes(store: Store, run_id: int, patient: str | None = None,
              programme: str | None = None) -> bytes:
    """The run's PDF report, or one patient's page."""
    kwargs = {"programme": programme} if programme else {}
    return _via_temp(".pdf", lambda p: report.pdf_report(store, run_id, p, patient, **kwargs))


def exports_ui(store: Store, run_id: int, patients: list[str], programme: str, *,
               key: str) -> None:
    """Download buttons: CSV per photo and per patient, PDF per run and per chosen patient."""
    st.markdown("##### Export")
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
    with c1:
        st.download_button("CSV per photo", lambda: csv_bytes(store, run_id, "image"),
                           f"screening-run-{run_id}-photos.csv", "text/csv",
                           key=f"{key}-csv-photos", icon=":material/download:", on_click="ignore")
    with c2:
        st.download_button("CSV per patient", lambda: csv_bytes(store, run_id, "patient"),
                           f"screening-run-{run_id}-patients.csv", "text/csv",
                           key=f"{key}-csv-patients", icon=":material/download:", on_click="ignore")
    with c3:
        st.download_button("PDF report (run)", lambda: pdf_bytes(store, run_id),
                           f"screening-run-{run_id}.pdf", "application/pdf",
                           key=f"{key}-pdf-run", icon=":material/picture_as_pdf:",
                           on_click="ignore")
    with c4:
        if patients:
            patient = st.selectbox("Patient for a one-patient PDF", patients,
                                   key=f"{key}-pdf-patient")
            st.download_button("PDF for this patient",
                               lambda: pdf_bytes(store, run_id, patient, programme),
                               f"screening-run-{run_id}-patient.pdf", "application/pdf",
                               key=f"{key}-pdf-patient-btn", icon=":material/picture_as_pdf:",
                               on_click="ignore")
    st.caption("Exports carry the research-use wording and name the model and version used; "
               "each export is written to the audit trail.")
