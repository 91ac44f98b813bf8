"""Labelled image lists: the public DR sets read in their distributors' layouts, and splits.

A preset knows where its set's labels CSV and photos lie inside the folder the distributor
ships (`data.root`), which columns hold the id, grade and macular oedema label, and how photos
group (a patient's or an examination's eyes look alike, so they must never straddle two
splits). A clinic's own export uses preset "csv" with its column names. Several sets can be
mixed in one run (`data.sources`). Rows without a usable grade (e.g. Messidor-2's ungradable
images) are skipped, counted and reported, never silently relabelled.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from training.trainer.config import DataConfig

IDRID = "B. Disease Grading"
_EXAM = re.compile(r"^(?P<date>\d{8})_\d+_(?P<department>\d{4})_")
_BREST = re.compile(r"^IM(?P<number>\d+)", re.IGNORECASE)


def messidor2_exams(ids: Iterable[str]) -> dict[str, str]:
    """Image id -> examination, since Messidor-2's table has no patient column.

    `20051020_43808_0100_PP` belongs to exam date 2005-10-20, department 0100 (both eyes of an
    exam share them); Brest's `IM000012`, `IM000013` number an exam's two eyes consecutively,
    so each number is paired greedily with the next one (the pair named by the lower id).
    Ids of neither form are left out (they stand alone).
    """
    groups: dict[str, str] = {}
    brest: dict[int, str] = {}
    for image_id in ids:
        if exam := _EXAM.match(image_id):
            groups[image_id] = f"{exam['date']}_{exam['department']}"
        elif photo := _BREST.match(image_id):
            brest[int(photo["number"])] = image_id
    partnered: set[int] = set()
    for number in sorted(brest):
        if number in partnered:
            continue
        name = Path(brest[number]).stem
        groups[brest[number]] = name
        if number + 1 in brest:
            groups[brest[number + 1]] = name
            partnered.add(number + 1)
    return groups


@dataclass(frozen=True)
class Preset:
    csv: str  # relative to the distributor's folder (data.root)
    images: str  # likewise
    id_column: str
    label_column: str
    suffix: str  # appended to the id to get the file name ("" when ids carry an extension)
    patient_pattern: str | None = None  # regex with a "patient" group, applied to the id
    group_ids: Callable[[Iterable[str]], dict[str, str]] | None = None  # whole-table grouping
    gradable_column: str | None = None  # 0 there: skipped as "ungradable"
    dme_column: str | None = None  # macular oedema label
    dme_referable_from: int = 1  # values from this one up are referable DME
    keep_dme_risk: bool = False  # the column is a risk scale worth keeping (IDRiD's 0/1/2)


PRESETS: dict[str, Preset] = {
    "aptos": Preset("train.csv", "train_images", "id_code", "diagnosis", ".png"),
    "synthetic": Preset("train.csv", "train_images", "id_code", "diagnosis", ".png"),
    "eyepacs": Preset("trainLabels.csv", "train", "image", "level", ".jpeg",
                      r"^(?P<patient>\d+)_(left|right)$"),
    "messidor2": Preset("messidor_data.csv", "IMAGES", "image_id", "adjudicated_dr_grade", "",
                        group_ids=messidor2_exams, gradable_column="adjudicated_gradable",
                        dme_column="adjudicated_dme"),
    "idrid": Preset(f"{IDRID}/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
                    f"{IDRID}/1. Original Images/a. Training Set", "Image name",
                    "Retinopathy grade", ".jpg", dme_column="Risk of macular edema",
                    dme_referable_from=2, keep_dme_risk=True),
}
NO_GRADE = ("no grade", "ungradable")  # skip reasons that mean "this row has no grade"


@dataclass(frozen=True)
class LabelledImage:
    id: str
    path: Path
    grade: int
    patient: str  # the group that must stay within one split (patient, examination or image)
    source: str = ""  # the set it came from (data.sources name, else the preset)
    dme: int | None = None  # referable diabetic macular oedema 1/0; None where not graded
    dme_risk: int | None = None  # IDRiD's risk of macular edema 0/1/2


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
            preset = dataclasses.replace(preset, suffix=cfg.image_suffix)
    base = root or Path(cfg.root or (cfg.synthetic_dir if cfg.preset == "synthetic" else "."))
    csv_path = Path(cfg.csv) if cfg.csv else base / preset.csv
    if cfg.images:
        images = Path(cfg.images)
    elif cfg.csv and not (root or cfg.root):
        images = _images_of_csv(csv_path, preset)
    else:
        images = base / preset.images
    return csv_path, images, preset


def _images_of_csv(csv_path: Path, preset: Preset) -> Path:
    """The photos of a CSV named directly: where the layout puts them, climbing from the CSV to
    the distributor's folder (IDRiD's CSV lies two folders down); a flat copy with the image
    folder beside the CSV, as older versions of a preset read, is still found."""
    root = csv_path.parent
    for _ in Path(preset.csv).parts[1:]:
        root = root.parent
    layout, flat = root / preset.images, csv_path.parent / Path(preset.images).name
    return flat if not layout.is_dir() and flat.is_dir() else layout


def load_records(cfg: DataConfig, root: Path | None = None) -> tuple[list[LabelledImage], dict]:
    """Every usable labelled photo of the config's source(s), and a summary of what was
    skipped (`dropped`, also per source under `sources`). `root` overrides data.root for a
    single source; each of data.sources has its own."""
    cfg.check("data")
    if not cfg.sources:
        records, part = _load_source(cfg, root, cfg.preset)
        return records, {**part, "sources": {cfg.preset: part}}
    records, parts = [], {}
    for source in cfg.sources:
        one = DataConfig(preset=source.preset, root=source.root, csv=source.csv,
                         images=source.images, limit=cfg.limit, synthetic_dir=cfg.synthetic_dir)
        found, parts[source.label] = _load_source(one, None, source.label)
        records += [_prefixed(r, source.label) for r in found]
    dropped: Counter[str] = Counter()
    for part in parts.values():
        dropped.update(part["dropped"])
    return records, {"csv": "; ".join(p["csv"] for p in parts.values()),
                     "rows": sum(p["rows"] for p in parts.values()), "used": len(records),
                     "dropped": dict(dropped), "sources": parts}


def _prefixed(record: LabelledImage, name: str) -> LabelledImage:
    """Ids and groups of a mixed run carry their source, so none collide across sets."""
    return dataclasses.replace(record, id=f"{name}:{record.id}",
                               patient=f"{name}:{record.patient}")


def _load_source(cfg: DataConfig, root: Path | None,
                 name: str) -> tuple[list[LabelledImage], dict]:
    csv_path, images, preset = resolve_preset(cfg, root)
    if not csv_path.is_file():
        layout = "" if cfg.csv else f"; data.root is the folder that holds {preset.csv!r}"
        raise ConfigError(f"Labels file not found: {csv_path} (preset {cfg.preset!r}{layout})")
    columns, rows = read_table(csv_path)
    if rows and (preset.id_column not in columns or preset.label_column not in columns):
        raise ConfigError(f"{csv_path}: expected columns {preset.id_column!r} and "
                          f"{preset.label_column!r}, found {columns}")
    ids = [(row.get(preset.id_column) or "").strip() for row in rows]
    group_of = preset.group_ids(ids) if preset.group_ids else {}
    considered = rows[: cfg.limit] if cfg.limit else rows
    records, dropped = [], Counter()
    for row in considered:
        record = _record(row, images, preset, cfg.patient_column, group_of, name)
        if isinstance(record, str):
            dropped[record] += 1
        else:
            records.append(record)
    if note := skip_note(name, len(considered), dropped):
        print(note, flush=True)
    return records, {"csv": str(csv_path), "rows": len(rows), "used": len(records),
                     "dropped": dict(dropped)}


def read_table(csv_path: Path) -> tuple[list[str], list[dict]]:
    """Header names and rows of a labels CSV. Names are stripped (IDRiD's "Risk of macular
    edema " ends in a space) and blank rows, such as a spreadsheet's trailing ",,", dropped."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        rows = [row for row in reader
                if any(isinstance(v, str) and v.strip() for k, v in row.items() if k)]
    return [name for name in reader.fieldnames if name], rows


def skip_note(name: str, rows: int, dropped: Counter) -> str | None:
    """One line per source saying how many rows were skipped and why (None: none were)."""
    if not dropped:
        return None
    gradeless = {why: n for why, n in dropped.items() if why in NO_GRADE}
    other = {why: n for why, n in dropped.items() if why not in NO_GRADE}
    parts = []
    if gradeless:
        parts.append(f"{sum(gradeless.values()):,} of {rows:,} rows without a grade "
                     f"({_reasons(gradeless)})")
    if other:
        parts.append(f"{sum(other.values()):,} of {rows:,} rows ({_reasons(other)})")
    return f"{name}: skipped " + "; ".join(parts)


def _reasons(counts: dict[str, int]) -> str:
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n:,} {why}" for why, n in sorted(counts.items()))


def _number(raw: str | None) -> int | None:
    """An integer cell, or None for an empty or non-numeric one."""
    try:
        return int(float((raw or "").strip()))
    except (ValueError, OverflowError):
        return None


def _record(row: dict, images: Path, preset: Preset, patient_column: str | None,
            group_of: dict[str, str], source: str) -> LabelledImage | str:
    """The row as a LabelledImage, or why it was skipped."""
    image_id = (row.get(preset.id_column) or "").strip()
    if preset.gradable_column and _number(row.get(preset.gradable_column)) == 0:
        return "ungradable"
    grade = _number(row.get(preset.label_column))
    if grade is None:
        return "no grade"
    if not 0 <= grade <= 4:
        return "grade outside 0-4"
    path = images / f"{image_id}{preset.suffix}"
    if not path.is_file():
        return "image file missing"
    dme_value = _number(row.get(preset.dme_column)) if preset.dme_column else None
    dme = None if dme_value is None else int(dme_value >= preset.dme_referable_from)
    return LabelledImage(image_id, path, grade, _group(row, image_id, preset, patient_column,
                                                       group_of), source, dme,
                         dme_value if preset.keep_dme_risk else None)


def _group(row: dict, image_id: str, preset: Preset, patient_column: str | None,
           group_of: dict[str, str]) -> str:
    """The photo's patient or examination: a patient column, else the preset's grouping, else
    the photo itself."""
    if patient_column and row.get(patient_column):
        return row[patient_column]
    if image_id in group_of:
        return group_of[image_id]
    if preset.patient_pattern and (match := re.match(preset.patient_pattern, image_id)):
        return match.group("patient")
    return image_id


# ----------------------------------------------------------------------------- splits
def _strata(records: Sequence[LabelledImage]) -> dict[tuple[str, int], list[str]]:
    """Groups by stratum (source, worst grade), each list sorted, so that every source and
    grade is spread over every split and one seed always gives one split. With a single source
    the strata are the worst grades alone, in the same order, as before sources existed."""
    stratum: dict[str, tuple[str, int]] = {}
    for r in records:
        source, worst = stratum.get(r.patient, (r.source, r.grade))
        stratum[r.patient] = (source, max(worst, r.grade))
    strata: dict[tuple[str, int], list[str]] = defaultdict(list)
    for group in sorted(stratum):
        strata[stratum[group]].append(group)
    return strata


def _draw_groups(records: Sequence[LabelledImage], fraction: float,
                 rng: np.random.Generator) -> set[str]:
    """About `fraction` of each stratum's groups (at least one, never all of two or more)."""
    drawn: set[str] = set()
    strata = _strata(records)
    for key in sorted(strata):
        groups = strata[key]
        rng.shuffle(groups)
        n = int(round(len(groups) * fraction))
        if len(groups) >= 2:
            n = min(max(n, 1), len(groups) - 1)
        drawn.update(groups[:n])
    return drawn


def _apart(records: Sequence[LabelledImage],
           held: set[str]) -> tuple[list[LabelledImage], list[LabelledImage]]:
    return [r for r in records if r.patient not in held], [r for r in records if r.patient in held]


def split_by_patient(records: list[LabelledImage], val_fraction: float,
                     seed: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Stratified on each group's source and worst grade; both eyes of a patient stay on one
    side."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return _apart(records, _draw_groups(records, val_fraction, np.random.default_rng(seed)))


def split_test_fraction(records: list[LabelledImage], fraction: float,
                        seed: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(rest, test): a fixed test set of `fraction` of the groups per (source, worst grade),
    drawn from the seed alone, so runs that differ in anything else test on the same photos."""
    if not 0 < fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 5417])  # a stream of its own, apart from the other splits
    return _apart(records, _draw_groups(records, fraction, rng))


def split_by_source(records: list[LabelledImage],
                    source: str) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(rest, test): leave one source out; every photo of `source` is the test set."""
    names = sorted({r.source for r in records})
    if source not in names:
        raise ConfigError(f"hold_out_source {source!r} is not a source of these records; "
                          f"available: {names}")
    rest = [r for r in records if r.source != source]
    if not rest:
        raise ConfigError(f"hold_out_source {source!r} leaves nothing to train on")
    return rest, [r for r in records if r.source == source]


def assign_folds(records: list[LabelledImage], folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold in 0..folds-1, stratified on each patient's source and worst grade.

    Both eyes of a patient share a fold, so no test fold ever holds the fellow eye of a
    training photo (fellow eyes look alike and would inflate every figure).
    """
    if folds < 2:
        raise ConfigError(f"cv_folds must be >= 2, got {folds}")
    strata = _strata(records)
    rng = np.random.default_rng([seed, folds, 11])
    assignment: dict[str, int] = {}
    offset = 0
    for key in sorted(strata):
        patients = strata[key]
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
