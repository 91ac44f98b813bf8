"""Photo inputs: uploaded files or generated synthetic samples, as bytes with a fingerprint.

Synthetic samples are generated on the fly (core.synthetic) and encoded to PNG so they travel
the same decode path as an upload; they are labelled as synthetic wherever they appear.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image

from core.grading import GRADE_NAMES
from core.images import SUPPORTED_SUFFIXES, image_fingerprint
from core.synthetic import Nuisance, generate_fundus

NO_SAMPLE = "(none)"
SAMPLE_SEED = 11
DEGRADED = "Synthetic degraded photo (out of focus)"
SAMPLES = tuple(f"Synthetic grade {g} ({name})" for g, name in enumerate(GRADE_NAMES)) + (DEGRADED,)
UPLOAD_TYPES = sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)


@dataclass(frozen=True)
class PhotoInput:
    """One photo to grade: its bytes, a display name, sha256 and whether it is synthetic."""

    name: str
    data: bytes
    fingerprint: str
    synthetic: bool = False


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=16)
def sample_bytes(sample: str) -> bytes:
    """PNG bytes of one named synthetic sample (deterministic: same name, same photo)."""
    if sample == DEGRADED:
        fundus = generate_fundus(2, SAMPLE_SEED, nuisance=Nuisance.strong_blur())
    else:
        fundus = generate_fundus(SAMPLES.index(sample), SAMPLE_SEED, nuisance=Nuisance())
    return png_bytes(fundus.image)


def photo_inputs_ui(*, key: str, multiple: bool = True) -> list[PhotoInput]:
    """Uploader plus a synthetic-sample picker; returns every chosen photo (uploads first)."""
    left, right = st.columns([3, 2])
    with left:
        files = st.file_uploader(
            "Fundus photo(s): JPEG, PNG, TIFF or DICOM", type=UPLOAD_TYPES,
            accept_multiple_files=multiple, key=f"{key}-upload")
    with right:
        sample = st.selectbox("...or try a synthetic sample", (NO_SAMPLE, *SAMPLES),
                              key=f"{key}-sample",
                              help="Generated pictures, not patients: for trying the software.")
    if files is None:
        files = []
    elif not isinstance(files, list):
        files = [files]
    photos = [_from_upload(f) for f in files]
    if sample and sample != NO_SAMPLE:
        data = sample_bytes(sample)
        photos.append(PhotoInput(sample, data, image_fingerprint(data), synthetic=True))
    return photos


def _from_upload(file) -> PhotoInput:
    data = file.getvalue()
    return PhotoInput(file.name, data, image_fingerprint(data))


def unique_photos(photos: list[PhotoInput]) -> tuple[list[PhotoInput], list[str]]:
    """Each photo once (by content): a file added twice would repeat every widget of its card
    (StreamlitDuplicateElementId). Returns the photos and the names left out."""
    seen: set[str] = set()
    kept, repeated = [], []
    for photo in photos:
        if photo.fingerprint in seen:
            repeated.append(photo.name)
        else:
            seen.add(photo.fingerprint)
            kept.append(photo)
    return kept, repeated
