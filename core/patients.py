"""Patient and eye from file names, and the per-eye / per-patient worklist.

Why a module of its own: this is the clinical logic of a screening run (CLINICAL.md: per eye =
worst gradable field, per patient = worst eye, worklist vtDR > referable > ungradable > mild >
none) and it must be testable on hand-made results, without images or models.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from core.errors import ConfigError
from core.grading import REVIEW_CONFIDENCE, Urgency, eye_urgency, patient_urgency, worklist_rank
from core.rows import FileRow, ResultRow

LOW_CONFIDENCE = "low confidence"  # prefix of core.grading.decide's reason as well
EYES = ("right", "left", "unknown")
_EYE_CODES = {"od": "right", "r": "right", "right": "right", "re": "right",
              "os": "left", "l": "left", "left": "left", "le": "left"}
_TOKEN_SPLIT = re.compile(r"[_\-\s.]+")


@dataclass(frozen=True)
class Identity:
    """Who and which eye a photo belongs to, as the clinic's file name says."""

    patient: str
    eye: str  # "right" | "left" | "unknown"
    field_index: int = 1


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """A user regex with named groups `patient` and `eye` (optional `field`)."""
    if not pattern:
        return None
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"The file-name pattern {pattern!r} is not a valid regular expression "
                          f"({exc}). Example: (?P<patient>\\d+)_(?P<eye>left|right)") from exc
    missing = {"patient", "eye"} - set(rx.groupindex)
    if missing:
        raise ConfigError(f"The file-name pattern needs the named groups {sorted(missing)}, "
                          "e.g. (?P<patient>\\w+)_(?P<eye>OD|OS)")
    return rx


def parse_identity(file: str, pattern: re.Pattern[str] | None = None) -> Identity:
    """User pattern (searched in the relative path), then built-in patterns, then one file =
    one eye (patient = path without suffix, eye unknown)."""
    path = PurePosixPath(file.replace("\\", "/"))
    if pattern is not None:
        m = pattern.search(path.as_posix())
        if m and m.group("patient"):
            eye = _EYE_CODES.get((m.group("eye") or "").lower(), "unknown")
            field = m.groupdict().get("field")
            return Identity(m.group("patient"), eye, _int(field))
    found = _builtin(path.stem)
    if found is not None:
        return found
    return Identity(path.with_suffix("").as_posix(), "unknown", 1)


def _builtin(stem: str) -> Identity | None:
    """EyePACS `10_left`, clinic `<id>_OD_<n>`, and OD/OS/L/R/left/right variants."""
    tokens = [t for t in _TOKEN_SPLIT.split(stem) if t]
    for i in range(1, len(tokens)):
        eye = _EYE_CODES.get(tokens[i].lower())
        if eye is None:
            continue
        rest = [t for t in tokens[i + 1:] if t.isdigit()]
        return Identity("_".join(tokens[:i]), eye, _int(rest[0] if rest else None))
    return None


def _int(text: str | None) -> int:
    try:
        return int(text) if text else 1
    except ValueError:
        return 1


# ---------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class ImageItem:
    """One file of the run with its primary result and the other bundles' results."""

    file: FileRow
    primary: ResultRow | None  # the run's first bundle
    others: tuple[ResultRow, ...]
    urgency: Urgency
    review_reasons: tuple[str, ...]

    @property
    def review(self) -> bool:
        return bool(self.review_reasons)

    @property
    def sort_p(self) -> float:
        return _p(self.primary)


@dataclass(frozen=True)
class EyeOutcome:
    patient: str
    eye: str
    urgency: Urgency  # worst gradable field
    grade: int | None  # worst gradable grade (primary bundle)
    p_referable: float | None
    images: tuple[ImageItem, ...]
    review: bool
    dme: bool | None = None  # any graded field with DME; None: not assessed (no DME output)
    p_dme: float | None = None  # highest p(DME) of the graded fields


@dataclass(frozen=True)
class PatientOutcome:
    patient: str
    urgency: Urgency  # worst eye
    grade: int | None
    p_referable: float | None
    eyes: tuple[EyeOutcome, ...]
    review: bool
    n_errors: int
    dme: bool | None = None  # any eye with DME; None: no eye assessed for DME
    p_dme: float | None = None


@dataclass(frozen=True)
class Worklist:
    images: tuple[ImageItem, ...]  # sorted by urgency, then p_referable
    eyes: tuple[EyeOutcome, ...]
    patients: tuple[PatientOutcome, ...]  # sorted by urgency, then p_referable

    def counts(self) -> dict[str, int]:
        """Patients per urgency label, plus files and errors."""
        out = {u.label: 0 for u in sorted(Urgency, reverse=True)}
        for p in self.patients:
            out[p.urgency.label] += 1
        out["files"] = len(self.images)
        out["file errors"] = sum(i.file.error is not None for i in self.images)
        out["duplicates"] = sum(i.file.duplicate_of is not None for i in self.images)
        out["needs review"] = sum(i.review for i in self.images)
        return out


def image_item(file: FileRow, rows: Sequence[ResultRow], models: Sequence[str],
               review_below: float = REVIEW_CONFIDENCE) -> ImageItem:
    """Urgency and review reasons from the primary bundle's decision (core.grading.decide);
    the user's confidence cut-off replaces the decision's default one; review also when
    bundles disagree."""
    by_key = {r.bundle_key: r for r in rows}
    ordered = [by_key[k] for k in models if k in by_key] + [
        r for r in rows if r.bundle_key not in models]
    primary = ordered[0] if ordered else None
    reasons = []
    if file.error is not None or primary is None or primary.error is not None:
        urgency = Urgency.UNGRADABLE
    else:
        urgency = Urgency(primary.urgency)
        reasons += primary.review_reasons  # decided with the grade (core.grading.decide)
        if review_below != REVIEW_CONFIDENCE:  # a caller's own cut-off replaces the default
            reasons = [r for r in reasons if not r.startswith(LOW_CONFIDENCE)]
            if primary.confidence is not None and primary.confidence < review_below:
                reasons.append(f"{LOW_CONFIDENCE} in the grade ({primary.confidence:.2f} < "
                               f"{review_below:.2f})")
    referable = {r.referable for r in ordered if r.grade is not None}
    if len(referable) > 1:
        reasons.append("models disagree on referable")
    return ImageItem(file, primary, tuple(ordered[1:]), urgency, tuple(reasons))


def build_worklist(files: Sequence[FileRow], results: Sequence[ResultRow],
                   models: Sequence[str] = (),
                   review_below: float = REVIEW_CONFIDENCE) -> Worklist:
    """Every file once (duplicates share their original's results), then eyes and patients."""
    by_hash: dict[str, list[ResultRow]] = defaultdict(list)
    for r in results:
        by_hash[r.content_hash].append(r)
    images = [image_item(f, by_hash.get(f.content_hash, []) if f.error is None else [], models,
                         review_below) for f in files]
    images.sort(key=lambda i: (-worklist_rank(i.urgency, i.review), -i.sort_p, i.file.file))
    eyes = aggregate_eyes(images)
    return Worklist(tuple(images), tuple(eyes), tuple(aggregate_patients(eyes)))


def aggregate_eyes(images: Sequence[ImageItem]) -> list[EyeOutcome]:
    groups: dict[tuple[str, str], list[ImageItem]] = defaultdict(list)
    for item in images:
        f = item.file
        eye_key = f.eye if f.eye != "unknown" else f"unknown:{f.file}"  # one file = one eye
        groups[(f.patient, eye_key)].append(item)
    eyes = []
    for (patient, _), items in groups.items():
        urgency = eye_urgency([i.urgency for i in items])
        graded = [i.primary for i in items if i.primary is not None and i.primary.grade is not None
                  and i.urgency != Urgency.UNGRADABLE]
        eyes.append(EyeOutcome(
            patient, items[0].file.eye, urgency,
            max((r.grade for r in graded), default=None),
            max((r.p_referable for r in graded if r.p_referable is not None), default=None),
            tuple(items), any(i.review for i in items),
            any_dme(r.dme for r in graded),
            max((r.p_dme for r in graded if r.p_dme is not None), default=None)))
    return eyes


def aggregate_patients(eyes: Sequence[EyeOutcome]) -> list[PatientOutcome]:
    groups: dict[str, list[EyeOutcome]] = defaultdict(list)
    for eye in eyes:
        groups[eye.patient].append(eye)
    patients = []
    for patient, items in groups.items():
        items.sort(key=lambda e: EYES.index(e.eye))
        grades = [e.grade for e in items if e.grade is not None]
        ps = [e.p_referable for e in items if e.p_referable is not None]
        patients.append(PatientOutcome(
            patient, patient_urgency([e.urgency for e in items]),
            max(grades, default=None), max(ps, default=None), tuple(items),
            any(e.review for e in items),
            sum(i.file.error is not None for e in items for i in e.images),
            any_dme(e.dme for e in items),
            max((e.p_dme for e in items if e.p_dme is not None), default=None)))
    patients.sort(key=lambda p: (-worklist_rank(p.urgency, p.review),
                                 -(p.p_referable if p.p_referable is not None else -1.0),
                                 p.patient))
    return patients


def any_dme(flags: Iterable[bool | None]) -> bool | None:
    """DME in any field / eye makes the eye / patient DME (CLINICAL.md: referable = grade >= 2
    and/or DME); None only when nothing was assessed, so "no" is never claimed unassessed."""
    assessed = [f for f in flags if f is not None]
    return any(assessed) if assessed else None


def _p(row: ResultRow | None) -> float:
    return -1.0 if row is None or row.p_referable is None else float(row.p_referable)
