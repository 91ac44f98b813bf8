"""The urgency-sorted worklist of a screening run: photos, eyes and patients, coloured by urgency.

Why tables built here and not in core: core.patients decides the clinical order (vtDR >
referable > ungradable > mild > none, worst eye per patient); this module only turns that into
pandas frames with thumbnails and colours, and reads back which photo the user clicked.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.grading import (
    DME_CELL_NOT_ASSESSED,
    DME_CELL_NOT_GRADED,
    GRADE_NAMES,
    NOT_FUNDUS_HEADLINE,
    Urgency,
    follow_up,
)
from core.patients import EyeOutcome, ImageItem, PatientOutcome, Worklist
from core.quality import NOT_FUNDUS
from core.store import Store

# background, text: vtDR red, referable orange, ungradable purple-grey, mild yellow, none green
URGENCY_COLOURS = {
    Urgency.VISION_THREATENING: ("#c62828", "#ffffff"),
    Urgency.REFERABLE: ("#ef6c00", "#ffffff"),
    Urgency.UNGRADABLE: ("#8e7cc3", "#ffffff"),
    Urgency.MILD: ("#fff176", "#1b2733"),
    Urgency.NONE: ("#a5d6a7", "#1b2733"),
}
_BY_LABEL = {u.label: u for u in Urgency}
URGENCY_LABELS = tuple(u.label for u in sorted(Urgency, reverse=True))


@dataclass(frozen=True)
class Filters:
    urgencies: tuple[str, ...] = URGENCY_LABELS
    review_only: bool = False
    errors_only: bool = False


@st.cache_data(show_spinner=False, max_entries=20_000)
def _thumb_url(_store: Store, db_path: str, content_hash: str) -> str | None:
    """A data URL of the stored JPEG thumbnail (content-addressed, so safe to cache)."""
    del db_path  # part of the cache key only
    jpeg = _store.thumbnail(content_hash)
    return None if not jpeg else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def thumbnail_url(store: Store, content_hash: str) -> str | None:
    return _thumb_url(store, str(store.path), content_hash) if content_hash else None


def item_error(item: ImageItem) -> str | None:
    return item.file.error or (item.primary.error if item.primary else None)


def filter_items(items: Sequence[ImageItem], filters: Filters) -> list[ImageItem]:
    """Keep the worklist order; apply the urgency, needs-review and errors-only filters."""
    wanted = set(filters.urgencies)
    out = [i for i in items if i.urgency.label in wanted]
    if filters.review_only:
        out = [i for i in out if i.review]
    if filters.errors_only:
        out = [i for i in out if item_error(i)]
    return out


def _grade(grade: int | None) -> str:
    return "not graded" if grade is None else f"{grade} - {GRADE_NAMES[grade]}"


def _eye(eye: str) -> str:
    return {"right": "right (OD)", "left": "left (OS)"}.get(eye, "unknown")


def dme_text(dme: bool | None, p_dme: float | None, *, graded: bool) -> str:
    """A DME cell: "YES (p 0.62)" / "no (p 0.10)"; "not graded" for an ungradable photo / eye,
    "not assessed" for a graded one whose bundle has no DME output (never a bare "no")."""
    if not graded:
        return DME_CELL_NOT_GRADED
    if dme is None:
        return DME_CELL_NOT_ASSESSED
    shown = "" if p_dme is None else f" (p {p_dme:.2f})"
    return ("YES" if dme else "no") + shown


def _fraction(p: float | None) -> float | None:
    return None if p is None else round(float(p), 3)


def photos_frame(items: Sequence[ImageItem], store: Store, *,
                 thumbnails: bool = True) -> pd.DataFrame:
    """One row per photo, in the given (urgency) order."""
    rows = []
    for item in items:
        f, r = item.file, item.primary
        error = item_error(item)
        rows.append({
            "photo": thumbnail_url(store, f.content_hash) if thumbnails else None,
            "urgency": item.urgency.label, "file": f.file, "patient": f.patient,
            "eye": _eye(f.eye), "grade": "-" if error else _grade(r.grade if r else None),
            "p(referable)": _fraction(r.p_referable if r else None),
            "DME": dme_text(r.dme if r else None, r.p_dme if r else None,
                            graded=not error and r is not None and r.grade is not None),
            "confidence": _fraction(r.confidence if r else None),
            "needs review": "; ".join(item.review_reasons),
            "problem": error or (NOT_FUNDUS_HEADLINE if r is not None
                                 and NOT_FUNDUS in r.quality_reasons else "")
            or (f"duplicate of {f.duplicate_of}" if f.duplicate_of else ""),
            "quality": "" if r is None or r.quality_level is None else r.quality_level,
            "quality notes": ", ".join(r.quality_reasons) if r is not None else "",
        })
    return pd.DataFrame(rows, columns=["photo", "urgency", "file", "patient", "eye", "grade",
                                       "p(referable)", "DME", "confidence", "needs review",
                                       "problem", "quality", "quality notes"])


def eyes_frame(eyes: Sequence[EyeOutcome]) -> pd.DataFrame:
    rows = [{"urgency": e.urgency.label, "patient": e.patient, "eye": _eye(e.eye),
             "worst grade": _grade(e.grade), "p(referable)": _fraction(e.p_referable),
             "DME": dme_text(e.dme, e.p_dme, graded=e.grade is not None),
             "photos": len(e.images), "needs review": "yes" if e.review else ""}
            for e in sorted(eyes, key=lambda e: (-e.urgency, e.patient, e.eye))]
    return pd.DataFrame(rows, columns=["urgency", "patient", "eye", "worst grade",
                                       "p(referable)", "DME", "photos", "needs review"])


def patient_guidance(p: PatientOutcome, programme: str) -> str:
    """Guideline text for the patient's worst eye and DME in either eye; ungradable means
    re-image or refer."""
    gradable = p.urgency != Urgency.UNGRADABLE and p.grade is not None
    g = follow_up(p.grade if gradable else None, programme, gradable=gradable,
                  dme=p.dme if gradable else None)
    return f"{g.category}: {g.action.removeprefix('Guideline: ')}"


def patients_frame(patients: Sequence[PatientOutcome], programme: str) -> pd.DataFrame:
    rows = []
    for p in patients:
        eyes = {e.eye: e.urgency.label for e in p.eyes if e.eye != "unknown"}
        rows.append({
            "urgency": p.urgency.label, "patient": p.patient,
            "right eye": eyes.get("right", ""), "left eye": eyes.get("left", ""),
            "worst grade": _grade(p.grade), "p(referable)": _fraction(p.p_referable),
            "DME": dme_text(p.dme, p.p_dme, graded=p.grade is not None),
            "photos": sum(len(e.images) for e in p.eyes), "unreadable": p.n_errors,
            "needs review": "yes" if p.review else "",
            "follow-up guidance": patient_guidance(p, programme)})
    return pd.DataFrame(rows, columns=["urgency", "patient", "right eye", "left eye",
                                       "worst grade", "DME", "follow-up guidance",
                                       "needs review", "p(referable)", "photos", "unreadable"])


def _colour(label: object) -> str:
    urgency = _BY_LABEL.get(str(label))
    if urgency is None:
        return ""
    bg, fg = URGENCY_COLOURS[urgency]
    return f"background-color: {bg}; color: {fg}; font-weight: 600"


def styled(df: pd.DataFrame):
    """Colour every urgency cell (also the per-eye columns of the patient table)."""
    cols = [c for c in ("urgency", "right eye", "left eye") if c in df.columns]
    if not cols or not len(df):
        return df
    numbers = [c for c in ("p(referable)", "confidence") if c in df.columns]
    return (df.style.map(_colour, subset=cols)
            .format(na_rep="")  # an unreadable file shows empty cells, not "None"
            .format("{:.2f}", subset=numbers, na_rep=""))


def counts_ui(wl: Worklist) -> None:
    """Patients per urgency (worst eye), most urgent first, then the photo counts."""
    counts = wl.counts()
    short = {Urgency.VISION_THREATENING: "Vision-threatening", Urgency.REFERABLE: "Referable",
             Urgency.UNGRADABLE: "Ungradable", Urgency.MILD: "Mild NPDR", Urgency.NONE: "No DR"}
    st.markdown("**Patients by urgency** (each patient counted once, by the worst eye)")
    for col, label in zip(st.columns(len(URGENCY_LABELS)), URGENCY_LABELS, strict=True):
        col.metric(short[_BY_LABEL[label]], counts[label], help=label)
    st.caption(f"{counts['files']} photos; {counts['file errors']} unreadable files; "
               f"{counts['duplicates']} duplicates; {counts['needs review']} photos flagged for "
               "review (a probability close to an operating threshold, low confidence in the "
               "grade, a photo of only usable quality, a model near chance, or the chosen models "
               "disagree on referable); they sort above the routine results.")


def filters_ui(*, key: str) -> Filters:
    left, mid, right = st.columns([5, 2, 2])
    chosen = left.multiselect("Show urgency", URGENCY_LABELS, default=list(URGENCY_LABELS),
                              key=f"{key}-urgency")
    review = mid.checkbox("Needs review only", key=f"{key}-review")
    errors = right.checkbox("Errors only", key=f"{key}-errors",
                            help="Files that could not be read.")
    return Filters(tuple(chosen), bool(review), bool(errors))


PHOTO_COLUMNS = {
    "photo": st.column_config.ImageColumn("photo", width="small",
                                          help="What the model saw (cropped to the fundus)."),
    "urgency": st.column_config.TextColumn("urgency", width=230),
    "p(referable)": st.column_config.NumberColumn(
        "p(referable)", format="%.2f", help="Model probability of grade 2 or worse."),
    "confidence": st.column_config.NumberColumn("confidence", format="%.2f"),
    "DME": st.column_config.TextColumn("DME", width=110),
}


def photos_table_ui(items: Sequence[ImageItem], store: Store, *, key: str) -> ImageItem | None:
    """The clickable photo table; returns the photo whose row is selected. The key carries
    the listed files, so a filter change clears the selection instead of moving it to
    another photo."""
    df = photos_frame(items, store)
    listed = hashlib.sha1("\n".join(i.file.file for i in items).encode()).hexdigest()[:12]
    event = st.dataframe(styled(df), key=f"{key}-{listed}", on_select="rerun", selection_mode="single-row",
                         hide_index=True, width="stretch", column_config=PHOTO_COLUMNS,
                         placeholder="",
                         row_height=64, height=min(72 + 64 * len(df), 650))
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    if not rows and isinstance(event, dict):  # older return type
        rows = list(event.get("selection", {}).get("rows", []))
    return items[rows[0]] if rows and 0 <= rows[0] < len(items) else None


TABLE_COLUMNS = {
    "p(referable)": st.column_config.NumberColumn(format="%.2f", width=90),
    "urgency": st.column_config.TextColumn(width=230),
    "right eye": st.column_config.TextColumn(width=230),
    "left eye": st.column_config.TextColumn(width=230),
    "eye": st.column_config.TextColumn(width=100),
    "worst grade": st.column_config.TextColumn(width=150),
    "DME": st.column_config.TextColumn(width=110, help="Macular oedema output at its threshold; "
                                       "not assessed: the model has no DME output."),
    "photos": st.column_config.NumberColumn(width=60),
    "unreadable": st.column_config.NumberColumn(width=80),
    "needs review": st.column_config.TextColumn(width=100),
    "follow-up guidance": st.column_config.TextColumn(width=520),
}


def table_ui(df: pd.DataFrame, *, key: str) -> None:
    """Eyes / patients table: fixed widths wide enough for the longest urgency and guidance
    (stretching squeezed them into "Vision-thr..." and "Moderate NP..."); scrolls sideways."""
    st.dataframe(styled(df), key=key, hide_index=True, width="stretch", placeholder="",
                 column_config={c: v for c, v in TABLE_COLUMNS.items() if c in df.columns})


def patients_table_ui(df: pd.DataFrame) -> None:
    """The patient list as a static table whose cells wrap: urgency, both eyes and the guideline
    text are read in full (the scrolling grid cut them to "Vision-thr..." and hid guidance)."""
    if not len(df):
        st.caption("No patients in this run yet.")
        return
    st.table(styled(df), hide_index=True)
