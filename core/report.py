"""CSV and PDF exports of a screening run, each carrying the research-use wording.

CSV: the wording sits on leading comment lines starting with '#', so spreadsheet users see it
and `pandas.read_csv(path, comment="#")` still parses the table (bundle keys, which contain '#',
are therefore left out; model name and version are in). Cells that a spreadsheet would run as
formulas are prefixed with a quote. PDF: fpdf2 with the core Helvetica font, text sanitised to
latin-1, the wording (and the demo notice for demo models) in every page's footer. Every export
is written to the audit trail.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos

from core.grading import (
    DME_NOT_ASSESSED,
    DME_SCOPE,
    GRADE_NAMES,
    PROGRAMMES,
    Urgency,
    dme_cell,
    dme_statement,
    follow_up,
)
from core.patients import ImageItem, PatientOutcome, Worklist
from core.store import RunInfo, Store
from core.wording import DEMO_NOTICE, HEATMAP_CAPTION, RESEARCH_USE_NOTICE, RESULT_RECORD_NOTICE

HeatmapFn = Callable[[ImageItem], "np.ndarray | bytes | None"]  # RGB overlay or JPEG/PNG bytes

IMAGE_COLUMNS = ("file", "patient", "eye", "field", "grade", "grade_name", "p_referable",
                 "referable", "p_vtdr", "vtdr", "p_dme", "dme", "confidence", "quality",
                 "quality_reasons", "urgency", "follow_up", "review", "review_reasons",
                 "duplicate_of", "model", "version",
                 "referable_threshold", "vtdr_threshold", "dme_threshold", "other_models", "error")
PATIENT_COLUMNS = ("patient", "urgency", "worst_grade", "p_referable", "dme", "right_eye",
                   "left_eye", "other_eyes", "photos", "review", "file_errors", "follow_up",
                   "model", "version")


# ---------------------------------------------------------------- shared


def _model_settings(info: RunInfo) -> dict[str, dict[str, Any]]:
    return info.settings.get("models", {})


def _has_dme(info: RunInfo) -> bool:
    """Some bundle of the run has a DME output (its threshold was recorded with the run)."""
    return any(m.get("dme_threshold") is not None for m in _model_settings(info).values())


def _is_demo(info: RunInfo) -> bool:
    return any(m.get("demo") for m in _model_settings(info).values())


def notices(info: RunInfo) -> list[str]:
    """The wording every export of this run must carry."""
    lines = [RESEARCH_USE_NOTICE, RESULT_RECORD_NOTICE]
    return lines + ([DEMO_NOTICE] if _is_demo(info) else [])


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---------------------------------------------------------------- CSV


def worklist_csv(store: Store, run_id: int, path: str | os.PathLike, per: str = "image",
                 *, review_below: float | None = None) -> Path:
    """Write the urgency-sorted worklist, one row per photo or per patient."""
    if per not in ("image", "patient"):
        raise ValueError(f"per must be 'image' or 'patient', got {per!r}")
    info = store.run(run_id)
    wl = store.worklist(run_id, review_below=review_below)
    rows = _image_rows(wl, info) if per == "image" else _patient_rows(wl, _has_dme(info))
    columns = IMAGE_COLUMNS if per == "image" else PATIENT_COLUMNS
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as fh:
        for line in notices(info):
            fh.write(f"# {line}\n")
        fh.write(f"# Screening run {run_id} ({info.status}), exported per {per}.\n")
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    store.audit("export_csv", run_id=run_id, details={"per": per, "rows": len(rows)})
    return out


def _cell(value: Any) -> str:
    text = _fmt(value)
    if text[:1] in ("=", "+", "@") or (text[:1] == "-" and not _is_number(text)):
        return "'" + text  # spreadsheets would run it as a formula
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _image_rows(wl: Worklist, info: RunInfo) -> list[dict[str, Any]]:
    models = _model_settings(info)
    rows = []
    for item in wl.images:
        f, r = item.file, item.primary
        cfg = models.get(r.bundle_key, {}) if r else {}
        rows.append({
            "file": f.file, "patient": f.patient, "eye": f.eye, "field": f.field_index,
            "grade": None if r is None else r.grade,
            "grade_name": GRADE_NAMES[r.grade] if r and r.grade is not None else "",
            "p_referable": r and r.p_referable, "referable": r and r.referable,
            "p_vtdr": r and r.p_vision_threatening, "vtdr": r and r.vtdr,
            "p_dme": r and r.p_dme,
            "dme": dme_cell(r.dme if r else None, cfg.get("dme_threshold") is not None),
            "confidence": r and r.confidence, "quality": r and r.quality_level,
            "quality_reasons": "; ".join(r.quality_reasons) if r else "",
            "urgency": item.urgency.label, "follow_up": _row_guidance(item),
            "review": item.review,
            "review_reasons": "; ".join(item.review_reasons), "duplicate_of": f.duplicate_of,
            "model": r and r.model, "version": r and r.version,
            "referable_threshold": cfg.get("referable_threshold"),
            "vtdr_threshold": cfg.get("vision_threatening_threshold"),
            "dme_threshold": cfg.get("dme_threshold"),
            "other_models": "; ".join(f"{o.model} {o.version}: grade {_fmt(o.grade)}"
                                      for o in item.others),
            "error": f.error or (r.error if r else None)})
    return rows


def _patient_rows(wl: Worklist, has_dme: bool) -> list[dict[str, Any]]:
    rows = []
    for p in wl.patients:
        by_eye = {e.eye: e.urgency.label for e in p.eyes if e.eye != "unknown"}
        primary = next((i.primary for e in p.eyes for i in e.images if i.primary), None)
        rows.append({
            "patient": p.patient, "urgency": p.urgency.label, "worst_grade": p.grade,
            "p_referable": p.p_referable, "dme": dme_cell(p.dme, has_dme),
            "right_eye": by_eye.get("right", ""),
            "left_eye": by_eye.get("left", ""),
            "other_eyes": "; ".join(e.urgency.label for e in p.eyes if e.eye == "unknown"),
            "photos": sum(len(e.images) for e in p.eyes), "review": p.review,
            "file_errors": p.n_errors, "follow_up": _guidance(p).action,
            "model": primary and primary.model, "version": primary and primary.version})
    return rows


def _row_guidance(item: ImageItem, programme: str = PROGRAMMES[0]) -> str:
    """The stored grade's and DME flag's guideline text (both came from core.grading.decide)."""
    r = item.primary
    gradable = item.urgency != Urgency.UNGRADABLE and r is not None and r.grade is not None
    return follow_up(r.grade if gradable else None, programme, gradable=gradable,
                     dme=r.dme if gradable else None).action


def _guidance(p: PatientOutcome, programme: str = PROGRAMMES[0]):
    gradable = p.urgency != Urgency.UNGRADABLE and p.grade is not None
    return follow_up(p.grade if gradable else None, programme, gradable=gradable,
                     dme=p.dme if gradable else None)


# ---------------------------------------------------------------- PDF


def latin1(text: Any) -> str:
    """Core PDF fonts are latin-1 only: map common punctuation, replace the rest."""
    s = str(text)
    for a, b in (("\u2013", "-"), ("\u2014", "-"), ("\u2018", "'"), ("\u2019", "'"),
                 ("\u201c", '"'), ("\u201d", '"'), ("\u2265", ">="), ("\u2264", "<="),
                 ("\u2026", "...")):
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


class _Pdf(FPDF):
    def __init__(self, footer_lines: list[str]) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.footer_lines = [latin1(x) for x in footer_lines]
        self.set_auto_page_break(auto=True, margin=12 + 4 * len(footer_lines) * 1.6)
        self.set_title("DR screening report (research use only)")

    def footer(self) -> None:
        self.set_y(-(8 + 4 * len(self.footer_lines) * 1.6))
        self.set_font("Helvetica", size=6.5)
        self.set_text_color(90, 90, 90)
        for line in self.footer_lines:
            self.multi_cell(0, 3, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.cell(0, 3, f"Page {self.page_no()}", align="R")
        self.set_text_color(0, 0, 0)

    def heading(self, text: str, size: float = 14) -> None:
        self.set_font("Helvetica", "B", size)
        self.multi_cell(0, size * 0.5, latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font("Helvetica", size=9)

    def para(self, text: str, size: float = 9) -> None:
        self.set_font("Helvetica", size=size)
        self.multi_cell(0, 4.5, latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def grid(self, header: tuple[str, ...], rows: list[tuple[Any, ...]],
             widths: tuple[int, ...]) -> None:
        self.set_font("Helvetica", size=7.5)
        with self.table(col_widths=widths, text_align="LEFT", line_height=4,
                        first_row_as_headings=True) as table:
            for values in [header, *rows]:
                row = table.row()
                for v in values:
                    row.cell(latin1(_fmt(v, 2)))


def pdf_report(store: Store, run_id: int, path: str | os.PathLike, patient: str | None = None,
               *, heatmap: HeatmapFn | None = None,
               programme: str = PROGRAMMES[0]) -> Path:
    """The run's summary and worklist, or one patient's page with thumbnails and guidance."""
    info = store.run(run_id)
    wl = store.worklist(run_id)
    pdf = _Pdf(notices(info))
    pdf.add_page()
    if patient is None:
        _run_pages(pdf, info, wl)
    else:
        match = [p for p in wl.patients if p.patient == patient]
        if not match:
            raise ValueError(f"Patient {patient!r} is not in run {run_id}; pick one from the "
                             "worklist.")
        _patient_page(pdf, store, info, match[0], heatmap, programme)
    out = Path(path)
    pdf.output(str(out))
    store.audit("export_pdf", run_id=run_id,
                details={"scope": "patient" if patient else "run", "pages": pdf.page_no()})
    return out


def _run_pages(pdf: _Pdf, info: RunInfo, wl: Worklist) -> None:
    pdf.heading(f"DR screening run {info.id} - research use only")
    pdf.para(f"Started {info.created_at}; status {info.status}; {info.n_files} files, "
             f"{info.n_errors} unreadable.")
    for key, cfg in _model_settings(info).items():
        cuts = cfg.get("grade_thresholds")
        pdf.para(f"Model {cfg.get('name', key)} {cfg.get('version', '')} ({cfg.get('tier', '')}"
                 f"{', DEMO' if cfg.get('demo') else ''}): referable threshold "
                 f"{_fmt(cfg.get('referable_threshold'))}, vtDR threshold "
                 f"{_fmt(cfg.get('vision_threatening_threshold'))}, "
                 + (f"grade cut points {', '.join(_fmt(c) for c in cuts)}, " if cuts else "")
                 + ("severe NPDR vs PDR by the more probable, "
                    if cfg.get("vt_grade_by_probability") else "")
                 + (f"DME threshold {_fmt(cfg.get('dme_threshold'))}, "
                    if cfg.get("dme_threshold") is not None else "no DME output, ")
                 + f"input {cfg.get('preprocessing', {}).get('input_size')} px.")
    pdf.para(_dme_legend(info))
    pdf.ln(2)
    pdf.heading("Summary (patients per urgency)", 11)
    pdf.grid(("result", "count"), list(wl.counts().items()), (120, 40))
    pdf.ln(3)
    pdf.heading("Worklist by patient (most urgent first)", 11)
    has_dme = _has_dme(info)
    rows = [(p.patient, p.urgency.label, p.grade, p.p_referable, dme_cell(p.dme, has_dme),
             ", ".join(f"{e.eye}: {e.urgency.label}" for e in p.eyes),
             "yes" if p.review else "") for p in wl.patients]
    pdf.grid(("patient", "urgency", "worst grade", "p(referable)", "DME", "eyes", "review"),
             rows, (22, 34, 14, 16, 16, 70, 12))


def _dme_legend(info: RunInfo) -> str:
    """What the DME column means (CLINICAL.md: "not assessed" unless a bundle has the output)."""
    if not _has_dme(info):
        return DME_NOT_ASSESSED + "."
    return (f"DME (macular oedema) from the model's DME output at its threshold: {DME_SCOPE}. "
            "DME makes a photo referable whatever its grade; 'not assessed': a model without "
            "a DME output.")


def _patient_page(pdf: _Pdf, store: Store, info: RunInfo, p: PatientOutcome,
                  heatmap: HeatmapFn | None, programme: str) -> None:
    pdf.heading(f"Patient {p.patient} - run {info.id} - research use only")
    guidance = _guidance(p, programme)
    pdf.para(f"Result: {p.urgency.label}; worst grade "
             f"{GRADE_NAMES[p.grade] if p.grade is not None else 'none (ungradable)'}; "
             f"DME: {dme_cell(p.dme, _has_dme(info))}"
             f"{'; needs human review' if p.review else ''}.")
    pdf.para(f"Follow-up ({guidance.programme}, {guidance.category}): {guidance.action} "
             f"{guidance.caveat}")
    for eye in p.eyes:
        pdf.ln(2)
        pdf.heading(f"Eye: {eye.eye} - {eye.urgency.label}; DME: "
                    f"{dme_cell(eye.dme, _has_dme(info))}", 11)
        for item in eye.images:
            _image_block(pdf, store, item, heatmap, info)
    pdf.ln(2)
    pdf.para(_dme_legend(info), size=7.5)


def _image_block(pdf: _Pdf, store: Store, item: ImageItem, heatmap: HeatmapFn | None,
                 info: RunInfo) -> None:
    f, r = item.file, item.primary
    if pdf.get_y() > pdf.h - pdf.b_margin - 50:
        pdf.add_page()
    top, x = pdf.get_y(), pdf.l_margin
    thumb = store.thumbnail(f.content_hash) if f.error is None else None
    if thumb:
        pdf.image(io.BytesIO(thumb), x=x, y=top, w=40, h=40)
        x += 42
    overlay = heatmap(item) if heatmap is not None and r is not None else None
    if overlay is not None:
        pdf.image(_as_image(overlay), x=x, y=top, w=40, h=40)
        x += 42
    pdf.set_xy(x + 2, top)
    lines = [f"{f.file} (field {f.field_index})", f"Urgency: {item.urgency.label}"]
    if f.error or (r and r.error):
        lines.append(f"Could not be screened: {f.error or r.error}")
    elif r is not None:
        grade = GRADE_NAMES[r.grade] if r.grade is not None else "ungradable"
        lines += [f"Grade: {grade}; p(referable) {_fmt(r.p_referable, 2)}; "
                  f"probability of this grade {_fmt(r.confidence, 2)}",
                  f"Referable: {_fmt(r.referable) or 'not graded'}; vision-threatening: "
                  f"{_fmt(r.vtdr) or 'not graded'}",
                  dme_statement(r.p_dme, r.dme, _model_settings(info).get(
                      r.bundle_key, {}).get("dme_threshold")),
                  f"Follow-up: {_row_guidance(item)}",
                  f"Quality: {r.quality_level}"
                  + (f" ({'; '.join(r.quality_reasons)})" if r.quality_reasons else ""),
                  f"Model: {r.model} {r.version}"]
        lines += [f"Also: {o.model} {o.version} grade {_fmt(o.grade)}" for o in item.others]
    if item.review_reasons:
        lines.append("Review: " + "; ".join(item.review_reasons))
    if f.duplicate_of:
        lines.append(f"Same photo as {f.duplicate_of}")
    if overlay is not None:
        lines.append(HEATMAP_CAPTION)
    pdf.set_font("Helvetica", size=8)
    for line in lines:
        pdf.set_x(x + 2)
        pdf.multi_cell(pdf.w - pdf.r_margin - x - 2, 3.8, latin1(line),
                       new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_y(max(pdf.get_y(), top + (42 if thumb or overlay is not None else 0)) + 2)


def _as_image(img: np.ndarray | bytes) -> io.BytesIO:
    if isinstance(img, bytes | bytearray):
        return io.BytesIO(bytes(img))
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise ValueError("Could not encode the heatmap overlay as PNG.")
    return io.BytesIO(buf.tobytes())
