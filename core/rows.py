"""One screened file and one graded result, as the store keeps them and the worklist reads them.

Why a module of its own: core.store persists these rows and core.patients builds the worklist
from them; living in the store made patients import the store and the store import patients
(a cycle hidden by a function-level import). core.store re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileRow:
    """One file seen in a run. duplicate_of names the earlier file with the same content."""

    run_id: int
    file: str  # relative to the screened root (or the zip / upload name)
    content_hash: str
    patient: str
    eye: str  # "right" | "left" | "unknown"
    field_index: int
    duplicate_of: str | None = None
    error: str | None = None  # read/decode error (no result rows then carry a grade)


@dataclass(frozen=True)
class ResultRow:
    """One photo graded by one bundle (or the error that stopped it)."""

    run_id: int
    file: str
    content_hash: str
    patient: str
    eye: str
    field_index: int
    model: str
    version: str
    bundle_key: str
    grade: int | None
    probs: tuple[float, ...] | None
    p_referable: float | None
    p_vision_threatening: float | None
    referable: bool | None
    vtdr: bool | None
    confidence: float | None
    quality_level: str | None
    quality_reasons: tuple[str, ...]
    urgency: int  # core.grading.Urgency value
    error: str | None = None
    created_at: str = ""
    review_reasons: tuple[str, ...] = ()  # core.grading.Decision.review_reasons
    # DME output (issue 33): calibrated p(DME) and the flag at the bundle's threshold; both None
    # where the bundle has no DME output (not assessed) or the photo was ungradable
    p_dme: float | None = None
    dme: bool | None = None
