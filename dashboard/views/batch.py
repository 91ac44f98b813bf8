"""Batch screening: a folder, photos or a zip through one or more graders into an urgency-sorted
worklist that survives a closed tab (every result is in SQLite), with exports and sign-off."""

from __future__ import annotations

import streamlit as st

from core.bundle import Bundle
from core.errors import DRError
from core.store import RunInfo
from core.wording import DEMO_NOTICE
from dashboard.components.batch_detail import detail_ui, remember_uploads, session_uploads
from dashboard.components.batch_export import exports_ui
from dashboard.components.batch_run import (
    OPEN_KEY,
    interrupted_run,
    is_folder_run,
    open_store,
    run_screening,
    runs_ui,
    stalled_note,
)
from dashboard.components.batch_source import (
    FOLDER,
    SourceChoice,
    configured_roots,
    pattern_ui,
    source_ui,
)
from dashboard.components.bundles import bundle_label, graders, installed
from dashboard.components.guidance import programme_ui
from dashboard.components.notice import demo_notice_ui, licence_notice_ui, research_notice_ui
from dashboard.components.worklist import (
    counts_ui,
    eyes_frame,
    filter_items,
    filters_ui,
    patients_frame,
    patients_table_ui,
    photos_table_ui,
    table_ui,
    thumbnail_url,
)

research_notice_ui()
st.title("Batch screening")
store = open_store()
if isinstance(store, str):
    st.error(store)
    st.stop()
bundles = graders(installed())
stopped = interrupted_run(store)
if stopped is not None:
    st.session_state[OPEN_KEY] = stopped
    st.info(f"Screening stopped. Run {stopped} keeps every photo graded so far and is listed as "
            "interrupted: open it below and press Resume to finish it.",
            icon=":material/pause_circle:")


def _models_ui() -> list[Bundle]:
    """One or more graders; the first chosen is primary (it sets urgency)."""
    chosen = st.multiselect(
        "Models (the first is primary: it sets the urgency; others flag disagreement)",
        range(len(bundles)), default=[0], key="batch-models",
        format_func=lambda i: bundle_label(bundles[i]))
    return [bundles[i] for i in chosen or []]


def _start(choice: SourceChoice, chosen: list[Bundle], pattern: str | None,
           run_id: int | None = None) -> None:
    """Screen, remember uploads for the photo view, then open the run."""
    result = run_screening(choice.sources, chosen, store, roots=list(choice.roots) or None,
                           pattern=pattern, run_id=run_id)
    if isinstance(result, str):
        st.error(result)
        return
    if choice.uploads:
        remember_uploads(result, choice.uploads)
    st.session_state[OPEN_KEY] = result
    st.rerun()


def _new_run() -> tuple[SourceChoice, list[Bundle], str | None, str | None]:
    st.subheader("New screening run")
    choice = source_ui(key="batch-source")
    chosen = _models_ui()
    demo_notice_ui(chosen)
    licence_notice_ui(chosen)
    with st.expander("Patient and eye from file names"):
        pattern, pattern_error = pattern_ui(key="batch-pattern")
    if choice.error and choice.kind == FOLDER and choice.roots:
        st.error(choice.error)
    if pattern_error:
        st.error(pattern_error)
    problem = (choice.error or pattern_error or ("Choose at least one model." if not chosen
                                                 else None))
    if st.button("Start screening", type="primary", key="batch-start",
                 disabled=not choice.ready or problem is not None,
                 icon=":material/play_arrow:"):
        _start(choice, chosen, pattern)
    st.caption("Results are saved photo by photo: closing the tab or a crash loses nothing. "
               "Changing anything on this page while it runs stops the run (resume it below).")
    return choice, chosen, pattern, problem


def _resume_ui(info: RunInfo, choice: SourceChoice, pattern: str | None) -> None:
    """Finish an interrupted run with the same models: a folder again, uploads re-supplied."""
    by_key = {b.key: b for b in bundles}
    missing = [k for k in info.models if k not in by_key]
    if missing:
        st.warning(f"Run {info.id} cannot be resumed: its model(s) {', '.join(missing)} are not "
                   "installed. Start a new run instead.")
        return
    models = [by_key[k] for k in info.models]
    if is_folder_run(info):
        source = SourceChoice(FOLDER, info.source, tuple(configured_roots()))
        note = f"Resume screens the rest of `{info.source}`."
    else:
        source = choice if choice.uploads else SourceChoice(choice.kind)
        note = ("This run screened uploads: to resume it, upload the same photos (or zip) again "
                "above, then press Resume. Photos already graded are not graded twice.")
    st.warning(f"Run {info.id} is **{info.status}**: {info.n_files} files recorded so far. "
               f"{note}", icon=":material/pending:")
    note = stalled_note(info)
    if note:
        st.caption(note)
    if st.button(f"Resume run {info.id}", key="batch-resume", disabled=not source.sources,
                 icon=":material/resume:"):
        _start(source, models, pattern, run_id=info.id)


def _run_demo_notice(info: RunInfo) -> None:
    demo = info.run_settings.demo_models()
    if demo:
        st.error(f"**DEMO MODEL** ({', '.join(demo)}). {DEMO_NOTICE}", icon=":material/warning:")


def _worklist(info: RunInfo) -> None:
    st.subheader(f"Worklist - run {info.id}")
    _run_demo_notice(info)
    try:
        wl = store.worklist(info.id)
    except DRError as exc:
        st.error(str(exc))
        return
    if not wl.images:
        st.info("This run has no photos recorded yet.")
        return
    counts_ui(wl)
    programme = programme_ui(key="batch-programme")
    photos_tab, eyes_tab, patients_tab = st.tabs(["Photos", "Eyes", "Patients"])
    with photos_tab:
        items = filter_items(wl.images, filters_ui(key="batch-filter"))
        st.caption(f"{len(items)} of {len(wl.images)} photos, most urgent first. Click a row "
                   "to see the photo, its heatmap and the sign-off.")
        selected = photos_table_ui(items, store, key="batch-photos")
        if selected is not None:
            primary = next((b for b in bundles if b.key == info.models[0]), None) \
                if info.models else None
            detail_ui(info, selected, roots=configured_roots(), bundle=primary,
                      thumb=thumbnail_url(store, selected.file.content_hash),
                      programme=programme)
    with eyes_tab:
        st.caption("Each eye takes its worst gradable photo.")
        table_ui(eyes_frame(wl.eyes), key="batch-eyes")
    with patients_tab:
        st.caption("Each patient takes the worst eye; an ungradable eye beside a negative eye "
                   "makes the patient ungradable (re-image or refer).")
        patients_table_ui(patients_frame(wl.patients, programme))
    exports_ui(store, info.id, [p.patient for p in wl.patients], programme, key="batch-export")
    if not is_folder_run(info) and not session_uploads(info.id):
        st.caption("The photos of this upload run are not kept on the server: the worklist, "
                   "thumbnails and exports are; upload them again to see full photos.")


if not bundles:
    st.info("No grading model is installed. See models/README.md to train or import a bundle, "
            "or set DR_MODELS_DIR to a folder of bundles. Earlier runs stay listed below.")
    choice, pattern = SourceChoice(FOLDER), None
else:
    with st.container(border=True):
        choice, _, pattern, _ = _new_run()

with st.container(border=True):
    st.subheader("Earlier runs")
    opened = runs_ui(store, key="batch-run")
    if opened is not None and opened.status != "done":
        _resume_ui(opened, choice, pattern)

if opened is not None:
    _worklist(opened)
