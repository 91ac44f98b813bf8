"""Labelled image lists: CSV + image folder presets for the public DR datasets, and splits.

Presets only name columns and folders; a clinic's own export uses preset "csv" with its column
names. Rows without a usable grade (e.g. Messidor-2's ungradable images) are dropped and
counted, never silently relabelled.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from training.config import DataConfig


@dataclass(frozen=True)
class Preset:
    csv: str
    images: str
    id_column: str
    label_column: str
    suffix: str  # appended to the id to get the file name ("" when ids carry an extension)
    patient_pattern: str | None = None  # regex with a "patient" group, applied to the id


PRESETS: dict[str, Preset] = {
    "aptos": Preset("train.csv", "train_images", "id_code", "diagnosis", ".png"),
    "synthetic": Preset("train.csv", "train_images", "id_code", "diagnosis", ".png"),
    "eyepacs": Preset("trainLabels.csv", "train", "image", "level", ".jpeg",
                      r"^(?P<patient>\d+)_(left|right)$"),
    "messidor2": Preset("messidor_data.csv", "IMAGES", "image_id", "adjudicated_dr_grade", ""),
    "idrid": Preset("a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set",
                    "Image name", "Retinopathy grade", ".jpg"),
}


@dataclass(frozen=True)
class LabelledImage:
    id: str
    path: Path
    grade: int
    patient: str


def resolve_preset(cfg: DataConfig, root: Path | None = None) -> tuple[Path, Path, Preset]:
    """CSV path, image folder and column names for a data config."""
    if cfg.preset == "csv":
        if not (cfg.csv and cfg.images and cfg.id_column and cfg.label_column):
            raise ConfigError("preset 'csv' needs data.csv, data.images, data.id_column and "
                              "data.label_column")
        preset = Preset(cfg.csv, cfg.images, cfg.id_column, cfg.label_column,
                        cfg.image_suffix or "", None)
    else:
        preset = PRESETS[cfg.preset]
        if cfg.image_suffix is not None:
            preset = Preset(preset.csv, preset.images, preset.id_column, preset.label_column,
                            cfg.image_suffix, preset.patient_pattern)
    base = root or Path(cfg.synthetic_dir if cfg.preset == "synthetic" else ".")
    csv_path = Path(cfg.csv) if cfg.csv else base / preset.csv
    images = Path(cfg.images) if cfg.images else csv_path.parent / preset.images
    return csv_path, images, preset


def load_records(cfg: DataConfig, root: Path | None = None) -> tuple[list[LabelledImage], dict]:
    """Read the labels CSV; returns the usable rows and a summary of what was dropped."""
    csv_path, images, preset = resolve_preset(cfg, root)
    if not csv_path.is_file():
        raise ConfigError(f"Labels file not found: {csv_path} (preset {cfg.preset!r})")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if rows and (preset.id_column not in rows[0] or preset.label_column not in rows[0]):
        raise ConfigError(f"{csv_path}: expected columns {preset.id_column!r} and "
                          f"{preset.label_column!r}, found {list(rows[0])}")
    records, dropped = [], Counter()
    for row in rows[: cfg.limit] if cfg.limit else rows:
        record = _record(row, images, preset, cfg.patient_column)
        if isinstance(record, str):
            dropped[record] += 1
        else:
            records.append(record)
    return records, {"csv": str(csv_path), "rows": len(rows), "used": len(records),
                     "dropped": dict(dropped)}


def _record(row: dict, images: Path, preset: Preset, patient_column: str | None):
    image_id = (row.get(preset.id_column) or "").strip()
    raw = (row.get(preset.label_column) or "").strip()
    try:
        grade = int(float(raw))
    except ValueError:
        return "no grade"
    if not 0 <= grade <= 4:
        return "grade outside 0-4"
    path = images / f"{image_id}{preset.suffix}"
    if not path.is_file():
        return "image file missing"
    patient = image_id
    if patient_column and row.get(patient_column):
        patient = row[patient_column]
    elif preset.patient_pattern:
        match = re.match(preset.patient_pattern, image_id)
        patient = match.group("patient") if match else image_id
    return LabelledImage(image_id, path, grade, patient)


def split_by_patient(records: list[LabelledImage], val_fraction: float,
                     seed: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Stratified on each patient's worst grade; both eyes of a patient stay on one side."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_patient: dict[str, list[LabelledImage]] = defaultdict(list)
    for r in records:
        by_patient[r.patient].append(r)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, items in sorted(by_patient.items()):
        strata[max(i.grade for i in items)].append(patient)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for grade in sorted(strata):
        patients = strata[grade]
        rng.shuffle(patients)
        n_val = int(round(len(patients) * val_fraction))
        if len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val_patients.update(patients[:n_val])
    train = [r for r in records if r.patient not in val_patients]
    val = [r for r in records if r.patient in val_patients]
    return train, val


def assign_folds(records: list[LabelledImage], folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold in 0..folds-1, stratified on each patient's worst grade.

    Both eyes of a patient share a fold, so no test fold ever holds the fellow eye of a
    training photo (fellow eyes look alike and would inflate every figure).
    """
    if folds < 2:
        raise ConfigError(f"cv_folds must be >= 2, got {folds}")
    worst: dict[str, int] = defaultdict(int)
    for r in records:
        worst[r.patient] = max(worst[r.patient], r.grade)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(worst):
        strata[worst[patient]].append(patient)
    rng = np.random.default_rng([seed, folds, 11])
    assignment: dict[str, int] = {}
    offset = 0
    for grade in sorted(strata):
        patients = strata[grade]
        rng.shuffle(patients)
        for i, patient in enumerate(patients):
            assignment[patient] = (offset + i) % folds
        offset += len(patients)  # the next stratum starts where this one stopped
    return assignment


def split_cv_fold(records: list[LabelledImage], folds: int, fold: int,
                  seed: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(rest, test): the patients of fold `fold` are the test set."""
    if not 0 <= fold < folds:
        raise ConfigError(f"cv_fold must be in 0..{folds - 1}, got {fold}")
    assignment = assign_folds(records, folds, seed)
    rest = [r for r in records if assignment[r.patient] != fold]
    test = [r for r in records if assignment[r.patient] == fold]
    return rest, test


def three_way_split(records: list[LabelledImage], val_fraction: float,
                    calibration_fraction: float, seed: int) -> tuple[list[LabelledImage], ...]:
    """(train, selection, calibration), patient-disjoint; calibration is the selection split
    itself when calibration_fraction is 0 (the behaviour of runs before the split existed)."""
    train, val = split_by_patient(records, val_fraction, seed)
    if not calibration_fraction:
        return train, val, val
    if not 0 < calibration_fraction < 1 - val_fraction:
        raise ConfigError(f"calibration_fraction must be in (0, {1 - val_fraction:.2f}), got "
                          f"{calibration_fraction}")
    train, calib = split_by_patient(train, calibration_fraction / (1 - val_fraction), seed + 1)
    return train, val, calib
