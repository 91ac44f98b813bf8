"""Where a batch comes from: a server folder inside the configured roots, photos or a zip upload.

Why the roots: a browser user must never make the server read an arbitrary path. The allowed
folders come from .streamlit/secrets.toml (`screening_roots`) or $DR_SCREEN_ROOTS; every path is
checked by core.safe_paths (no `..`, no symlink leading out), whose message is shown as is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import DRError
from core.patients import compile_pattern
from core.safe_paths import ROOTS_ENV, resolve_inside_roots, roots_from_env
from dashboard.components.upload import UPLOAD_TYPES

ROOTS_SECRET = "screening_roots"
FOLDER, PHOTOS, ZIP = "Server folder", "Upload photos", "Upload a zip"
KINDS = (PHOTOS, ZIP, FOLDER)
ROOT_ITSELF = "(the whole folder)"
MAX_FOLDER_CHOICES = 300
PATTERN_HELP = (
    "Built-in file-name patterns (used when this box is empty): EyePACS `10_left.jpeg` / "
    "`10_right.jpeg`; clinic `<id>_OD_<n>.jpg` / `<id>_OS_<n>.jpg`; also R/L, RE/LE and "
    "right/left separated by `_`, `-`, `.` or a space. A name that matches none counts as one "
    "eye of its own patient. Your own pattern is a regular expression with the named groups "
    "`patient` and `eye` (optional `field`), searched in the file's path, e.g. "
    "`(?P<patient>\\d+)-(?P<eye>OD|OS)`.")


@dataclass(frozen=True)
class SourceChoice:
    """What to screen. `sources` goes to core.screening.screen; `error` says why it cannot."""

    kind: str
    sources: Any = None  # Path of a folder, or a list of (name, bytes) uploads
    roots: tuple[Path, ...] = ()
    error: str | None = None
    uploads: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.error is None and bool(self.sources)


def _secret_roots() -> list[str]:
    """`screening_roots` from st.secrets; nothing (not an exception) when no secrets file."""
    try:
        value = st.secrets.get(ROOTS_SECRET)
    except Exception:  # noqa: BLE001 - no secrets.toml raises; that simply means "not set"
        return []
    if not value:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def configured_roots() -> list[Path]:
    """Allowed screening folders: the secrets file first, else $DR_SCREEN_ROOTS."""
    secret = _secret_roots()
    return [Path(p).expanduser() for p in secret] if secret else roots_from_env()


def folder_choices(root: Path, depth: int = 2, limit: int = MAX_FOLDER_CHOICES) -> list[str]:
    """Sub-folders of a root (relative, depth-limited, symlinks not followed), for a picker."""
    out: list[str] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.parts) - base_depth >= depth:
            dirnames[:] = []
        if here != root:
            out.append(here.relative_to(root).as_posix())
        if len(out) >= limit:
            break
    return out


def _no_roots_message() -> str:
    return ("No server folder is configured for screening. An administrator can allow folders "
            f"with `{ROOTS_SECRET} = [\"/path/to/photos\"]` in .streamlit/secrets.toml, or the "
            f"environment variable {ROOTS_ENV} (folders separated by '{os.pathsep}'), then "
            "restart the dashboard. Until then, upload the photos or a zip.")


def folder_ui(roots: Sequence[Path], *, key: str) -> SourceChoice:
    """Pick a root, then a sub-folder or a typed path; refused paths carry core's message."""
    if not roots:
        st.info(_no_roots_message(), icon=":material/folder_off:")
        return SourceChoice(FOLDER, error="No screening folder is configured.")
    root = roots[0]
    if len(roots) > 1:
        root = st.selectbox("Allowed folder", roots, key=f"{key}-root", format_func=str) or root
    try:
        subs = folder_choices(Path(root).expanduser().resolve())
    except OSError:
        subs = []
    sub = st.selectbox("Folder to screen", (ROOT_ITSELF, *subs), key=f"{key}-folder",
                       help=f"Folders inside {root} (searched recursively for photos).")
    typed = st.text_input("...or type a folder path inside it", key=f"{key}-path",
                          placeholder="optional: a sub-folder path",
                          help="Relative to the allowed folder, or a full path inside it.")
    text = (typed or "").strip() or ("" if sub in (None, ROOT_ITSELF) else sub)
    raw = Path(text) if Path(text).is_absolute() else Path(root) / text
    try:
        folder = resolve_inside_roots(raw if text else root, roots)
    except DRError as exc:
        return SourceChoice(FOLDER, roots=tuple(roots), error=str(exc))
    if not folder.is_dir():
        return SourceChoice(FOLDER, roots=tuple(roots),
                            error=f"'{text}' is a file, not a folder. Choose its folder.")
    st.caption(f"Screening `{folder}` and its sub-folders.")
    return SourceChoice(FOLDER, folder, tuple(roots))


def uploads_ui(kind: str, *, key: str) -> SourceChoice:
    """Several photos, or one zip; the bytes are kept so the photos can be shown later."""
    if kind == ZIP:
        file = st.file_uploader("A zip of fundus photos (folders inside are fine)", type=["zip"],
                                key=f"{key}-zip")
        files = [file] if file is not None else []
    else:
        files = st.file_uploader("Fundus photos: JPEG, PNG, TIFF or DICOM", type=UPLOAD_TYPES,
                                 accept_multiple_files=True, key=f"{key}-photos") or []
    uploads = [(f.name, f.getvalue()) for f in files]
    return SourceChoice(kind, uploads, uploads=uploads)


def source_ui(*, key: str) -> SourceChoice:
    """The three kinds of source behind one radio."""
    kind = st.radio("Photos to screen", KINDS, horizontal=True, key=f"{key}-kind") or PHOTOS
    if kind == FOLDER:
        return folder_ui(configured_roots(), key=key)
    return uploads_ui(kind, key=key)


def pattern_ui(*, key: str) -> tuple[str | None, str | None]:
    """(pattern or None, error message or None): the optional patient/eye file-name regex."""
    text = st.text_input("File-name pattern for patient and eye (optional)", key=key,
                         placeholder="(?P<patient>\\d+)_(?P<eye>left|right)", help=PATTERN_HELP)
    text = (text or "").strip()
    if not text:
        return None, None
    try:
        compile_pattern(text)
    except DRError as exc:
        return None, str(exc)
    return text, None
