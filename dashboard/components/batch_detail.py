"""One photo of a screening run: the photo, its heatmap, the stored result and the sign-off.

Why the stored result: the worklist is the record of the run (model, version, thresholds as
screened), so the grade shown and signed off is the stored one. The photo itself is read again
from the screened folder (inside the allowed roots) or from the uploads kept in this browser
session; the heatmap is computed on demand with the run's primary model when it is installed.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import streamlit as st

from core.bundle import Bundle
from core.errors import DRError
from core.grading import (
    DME_HEADLINE,
    GRADE_NAMES,
    HEADLINES,
    NOT_FUNDUS_HEADLINE,
    REFERABLE_MIN_GRADE,
    Urgency,
    dme_cell,
    dme_statement,
    follow_up,
    format_against,
    format_probability,
)
from core.images import image_fingerprint, read_image_bytes
from core.patients import ImageItem
from core.quality import NOT_FUNDUS
from core.records import ModelRunSettings
from core.safe_paths import resolve_inside_roots
from core.store import ResultRow, RunInfo
from core.wording import RESULT_RECORD_NOTICE
from dashboard.components.analysis import analysis_for, explanation_for
from dashboard.components.batch_run import is_folder_run
from dashboard.components.heatmap import (
    heatmap_caption,
    opacity_ui,
    overlay_image,
    show_off_field_note,
    target_caption,
    target_ui,
)
from dashboard.components.signoff import signoff_ui
from dashboard.components.upload import PhotoInput
from dashboard.components.worklist import item_error
from dashboard.components.wrong_upload import wrong_upload_ui

UPLOADS_KEY = "batch-uploads"  # run id -> [(name, bytes)] of this session's uploads
_KIND = {Urgency.VISION_THREATENING: "error", Urgency.REFERABLE: "error",
         Urgency.UNGRADABLE: "warning", Urgency.MILD: "success", Urgency.NONE: "success"}


def not_fundus(item: ImageItem) -> bool:
    """The stored quality gate said: not a fundus photograph (a wrong upload)."""
    return item.primary is not None and NOT_FUNDUS in item.primary.quality_reasons


def headline(item: ImageItem) -> tuple[str, str]:
    """(st method, text) of the stored decision; a fragile negative is never green."""
    if not_fundus(item):
        return "error", NOT_FUNDUS_HEADLINE
    kind = _KIND[item.urgency]
    if kind == "success" and item.review:
        kind = "info"
    r = item.primary
    if r is not None and r.dme and r.grade is not None and r.grade < REFERABLE_MIN_GRADE:
        return kind, DME_HEADLINE  # referable on macular oedema alone: say why
    return kind, HEADLINES[item.urgency]


def remember_uploads(run_id: int, uploads: list[tuple[str, bytes]]) -> None:
    """Keep a run's uploaded bytes for this browser session (they are not stored on disk)."""
    st.session_state.setdefault(UPLOADS_KEY, {})[run_id] = list(uploads)


def session_uploads(run_id: int) -> list[tuple[str, bytes]]:
    return st.session_state.get(UPLOADS_KEY, {}).get(run_id, [])


def _from_uploads(name: str, content_hash: str, uploads: Sequence[tuple[str, bytes]]
                  ) -> bytes | None:
    """The upload (or zip member) with this name, else with this content."""
    for upload_name, data in uploads:
        if upload_name.lower().endswith(".zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    if name in zf.namelist():
                        member = zf.read(name)
                        if image_fingerprint(member) == content_hash:
                            return member
            except (zipfile.BadZipFile, OSError, KeyError):
                continue
        elif upload_name == name and image_fingerprint(data) == content_hash:
            return data
    return next((d for n, d in uploads if not n.lower().endswith(".zip")
                 and image_fingerprint(d) == content_hash), None)


def photo_bytes(info: RunInfo, item: ImageItem, roots: Sequence[Path]) -> bytes | str:
    """The photo's bytes, or why they cannot be shown (never reads outside the roots)."""
    f = item.file
    if not is_folder_run(info):
        data = _from_uploads(f.file, f.content_hash, session_uploads(info.id))
        return data if data is not None else (
            "The uploaded photos of this run are not in this browser session any more. Upload "
            "the same photos again (and resume or start a run) to see the full photo and "
            "heatmap; the thumbnail and stored result are shown meanwhile.")
    try:
        path = resolve_inside_roots(Path(info.source) / f.file, roots)
        data = read_image_bytes(path, name=Path(f.file).name)
    except DRError as exc:
        return f"The photo cannot be read from the screened folder: {exc}"
    if image_fingerprint(data) != f.content_hash:
        return ("This file has changed on disk since it was screened; the stored result "
                "belongs to the earlier content. Screen the folder again.")
    return data


def _settings(info: RunInfo, row: ResultRow) -> ModelRunSettings:
    found = info.run_settings.models.get(row.bundle_key)
    return found or ModelRunSettings(name=row.model, version=row.version, demo=False, tier="")


def dme_flag(dme: bool | None, threshold: float | None) -> str:
    """YES / no / not assessed (the run's bundle had no DME output) / not graded."""
    word = dme_cell(dme, threshold is not None)
    return {"yes": "YES"}.get(word, word)


def _p_line(label: str, p: float | None, threshold: object) -> str:
    if p is None:
        return f"{label}: -"
    if not isinstance(threshold, (int, float)):
        return f"{label}: **{format_probability(p)}** (threshold not recorded)"
    shown_p, shown_t = format_against(p, threshold)
    return f"{label}: **{shown_p}** (threshold {shown_t})"


def result_ui(info: RunInfo, item: ImageItem, programme: str) -> None:
    """The stored result: decision first, then grade, probabilities, quality and guidance."""
    kind, text = headline(item)
    getattr(st, kind)(f"**{text}**")
    error = item_error(item)
    if error:
        st.error(error)
        st.markdown("The file could not be read, so it was not graded. **Re-image or check "
                    "the file.**")
        return
    row = item.primary
    if row is None:
        st.info("No stored result for this photo.")
        return
    cfg = _settings(info, row)
    dme_line = dme_statement(row.p_dme, row.dme, cfg.dme_threshold)
    if row.grade is None:
        reasons = ", ".join(row.quality_reasons) or row.quality_level or "quality gate"
        st.markdown(f"Photo quality: **{row.quality_level}** ({reasons}). No grade is given for "
                    "an ungradable photo. **Re-image, or refer for a standard eye "
                    "examination.**")
        st.caption(dme_line)
    else:
        st.markdown(f"#### Suggested grade: {GRADE_NAMES[row.grade]} (ICDR {row.grade})  \n"
                    f"Referable DR: **{'YES' if row.referable else 'no'}** - "
                    f"vision-threatening DR: **{'YES' if row.vtdr else 'no'}** - "
                    f"macular oedema (DME): **{dme_flag(row.dme, cfg.dme_threshold)}**")
        st.markdown("  \n".join([
            _p_line("P(referable DR)", row.p_referable, cfg.referable_threshold),
            _p_line("P(vision-threatening DR)", row.p_vision_threatening,
                    cfg.vision_threatening_threshold),
            f"Probability of this grade: **{row.confidence:.0%}**",
            f"Photo quality: {row.quality_level}"
            + (f" ({', '.join(row.quality_reasons)})" if row.quality_reasons else ""),
            f"**{dme_line}**" if row.dme else dme_line]))
    if item.review_reasons:
        st.warning("Needs review: " + "; ".join(item.review_reasons))
    for other in item.others:
        st.caption(f"Also screened with {other.model} {other.version}: "
                   + ("ungradable" if other.grade is None else f"grade {other.grade}"))
    g = follow_up(row.grade, programme, gradable=row.grade is not None, dme=row.dme)
    st.info(f"**Follow-up guidance ({g.programme}), {g.category}:** {g.action}")
    if g.caveat:
        st.caption(g.caveat)
    st.caption(f"Model **{row.model}** version **{row.version}**"
               + (" (DEMO: synthetic training images)" if cfg.demo else "")
               + f". {RESULT_RECORD_NOTICE}")


def images_ui(item: ImageItem, data: bytes | str, bundle: Bundle | None, thumb: str | None,
              *, key: str) -> None:
    """The photo and, for a gradable photo with its model installed, the heatmap beside it."""
    left, right = st.columns(2)
    if isinstance(data, str):
        if thumb:
            left.image(thumb, caption="Thumbnail stored with the run", width=240)
        right.info(data)
        return
    if bundle is None:
        left.image(data, caption=item.file.file, width="stretch")
        right.info("The run's primary model is not installed any more, so no heatmap.")
        return
    analysis = analysis_for(bundle, PhotoInput(item.file.file, data, item.file.content_hash))
    if analysis.prepared is None:
        left.image(data, caption=item.file.file, width="stretch")
        right.warning(analysis.error or "The photo could not be prepared.")
        return
    cropped = analysis.prepared.pre.cropped
    left.image(cropped, caption="Photo (cropped to the fundus field)", width="stretch")
    if item.urgency == Urgency.UNGRADABLE:
        right.caption("No heatmap: the photo is ungradable.")
        return
    shown = item.primary.grade if item.primary is not None else None
    with right:
        slot = st.empty()
        target = target_ui(shown, key=f"{key}-target", has_dme=bundle.manifest.has_dme)
        exp = explanation_for(analysis, target=target)
        if isinstance(exp, str):
            slot.warning(exp)
            return
        alpha = opacity_ui(key=f"{key}-opacity")
        slot.image(overlay_image(cropped, exp.heatmap, alpha), width="stretch",
                   caption="Heatmap: " + target_caption(exp, shown))
        show_off_field_note(exp.heatmap, cropped)
        st.caption(heatmap_caption())


def detail_ui(info: RunInfo, item: ImageItem, *, roots: Sequence[Path], bundle: Bundle | None,
              thumb: str | None, programme: str) -> None:
    """Everything about one photo, ending with the clinician sign-off (stored with the run)."""
    key = f"batch-{info.id}-{item.file.content_hash[:16] or item.file.file}"
    with st.container(border=True):
        f = item.file
        st.subheader(f.file)
        st.caption(f"Patient {f.patient}, eye {f.eye}, field {f.field_index}"
                   + (f"; same content as {f.duplicate_of}" if f.duplicate_of else ""))
        photo_col, result_col = st.columns([3, 2])
        with photo_col:
            data = photo_bytes(info, item, roots) if not item_error(item) else \
                "The file could not be read."
            images_ui(item, data, bundle, thumb, key=key)
        with result_col:
            result_ui(info, item, programme)
        if item.primary is not None and not item_error(item):
            if not_fundus(item):
                wrong_upload_ui(item.primary, f.content_hash, f.file, key=key, run_id=info.id)
            else:
                signoff_ui(item.primary, f.content_hash, f.file, key=key, run_id=info.id)
