"""Running a screening from the page, and listing / resuming earlier runs.

Why in the script thread: core.screening commits every batch to SQLite as it goes, so the page
only has to show progress. Each progress update is a Streamlit call, which is where Streamlit
stops a script when the user clicks Stop (or anything else): screen()'s `finally` then marks the
run 'interrupted', and it can be resumed from the run list. Nothing graded is lost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from core.bundle import Bundle
from core.errors import DRError
from core.records import RunKind
from core.screening import plan_sources, screen
from core.store import RunInfo, Store
from dashboard.components.database import open_store  # noqa: F401 - the pages' import

IN_PROCESS_MAX = 16  # up to this many photos, decoding in worker processes costs more than it saves
ACTIVE_KEY = "batch-active"  # set while a run is in progress in this session
OPEN_KEY = "batch-open"  # a run to open on the next script run


def workers_for(n_files: int) -> int | None:
    """0 (decode in this process) for small batches; core's default (cores - 1) otherwise."""
    return 0 if n_files <= IN_PROCESS_MAX else None


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "estimating"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(done: int, total: int, rate: float, eta: float) -> str:
    return (f"{done} / {total} photos - {rate:.1f} photos/s - about {format_eta(eta)} left"
            if done < total else f"{done} / {total} photos - {rate:.1f} photos/s - finishing")


def _progress_callback(bar: Any, min_interval: float = 0.2) -> Callable[..., None]:
    """Throttled progress updates (each one is also where a Stop click takes effect)."""
    last = [0.0]

    def update(done: int, total: int, rate: float, eta: float) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < min_interval:
            return
        last[0] = now
        bar.progress(min(done / total, 1.0) if total else 1.0,
                     text=progress_text(done, total, rate, eta))

    return update


def run_screening(sources: Any, bundles: Sequence[Bundle], store: Store, *,
                  roots: Sequence[Path] | None, pattern: str | None,
                  run_id: int | None = None) -> int | str:
    """Screen with a progress bar and a Stop button; the run id, or the error message."""
    try:
        total, _ = plan_sources(sources, roots)
    except DRError as exc:
        return str(exc)
    if total == 0:
        return "There are no files to screen in this source."
    st.session_state[ACTIVE_KEY] = max((r.id for r in store.list_runs()), default=0)
    st.button("Stop screening", key="batch-stop", icon=":material/stop_circle:",
              help="Stops after the current photos; what is graded is kept and the run can be "
                   "resumed from 'Earlier runs'.")
    bar = st.progress(0.0, text=f"0 / {total} photos - starting (loading the models)...")
    try:
        new_id = screen(sources, list(bundles), store, run_id=run_id, roots=roots,
                        pattern=pattern, workers=workers_for(total),
                        progress=_progress_callback(bar))
    except DRError as exc:
        st.session_state.pop(ACTIVE_KEY, None)
        return str(exc)
    # Not in a `finally`: when Streamlit stops the script, the key must survive so the next
    # script run can open the interrupted run.
    st.session_state.pop(ACTIVE_KEY, None)
    return new_id


def interrupted_run(store: Store) -> int | None:
    """After a run this session started was stopped: its id (the newest run created since)."""
    before = st.session_state.pop(ACTIVE_KEY, None)
    if before is None:
        return None
    newer = [r.id for r in store.list_runs() if r.id > before]
    return max(newer) if newer else None


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def run_label(info: RunInfo) -> str:
    """One line per run: when, what, status and counts (the source is the folder or uploads)."""
    source = info.source if len(info.source) <= 60 else "..." + info.source[-57:]
    idle = info.idle_minutes()
    status = info.status if idle is None else f"running, last photo stored {_ago(idle)}"
    return (f"Run {info.id} - {_when(info.created_at)} - {source} - {status} - "
            f"{info.n_files} files, {info.n_errors} unreadable")


def _ago(minutes: float) -> str:
    if minutes < 1:
        return "under a minute ago"
    if minutes < 120:
        return f"{minutes:.0f} min ago"
    return f"{minutes / 60:.0f} h ago"


def stalled_note(info: RunInfo) -> str | None:
    """For a 'running' run: how long it has been idle, and what that probably means."""
    idle = info.idle_minutes()
    if idle is None:
        return None
    if idle < 2:
        return (f"Last photo stored {_ago(idle)}: it is probably still being screened, here or "
                "in another browser tab. Resume it only if nobody else is screening it now.")
    return (f"No photo stored for {_ago(idle).removesuffix(' ago')}: the run stopped (a closed "
            "tab, a restart or a crash). Everything stored is kept; resume to screen the rest.")


def runs_ui(store: Store, *, key: str) -> RunInfo | None:
    """Select an earlier run (newest first); None when the database holds none."""
    if st.session_state.get(OPEN_KEY) is not None:
        st.session_state[key] = st.session_state.pop(OPEN_KEY)
    runs = {r.id: r for r in store.list_runs()}
    if not runs:
        st.caption("No screening run yet: results of every run are kept in the screening "
                   "database and listed here.")
        return None
    if st.session_state.get(key) not in runs:
        st.session_state.pop(key, None)
    run_id = st.selectbox("Open a run", list(runs), key=key,
                          format_func=lambda i: run_label(runs[i]))
    return runs.get(run_id) if run_id is not None else None


def is_folder_run(info: RunInfo) -> bool:
    """A folder (or zip) on the server, whose photos the page can read again; not uploads."""
    return info.kind is RunKind.FOLDER
