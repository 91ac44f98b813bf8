"""The splits of one run and the figures measured on each.

A run may hold up to four patient-disjoint parts of its data:
- train: what the weights learn from;
- selection: chooses the epoch (early stopping);
- calibration: temperature, operating thresholds and ordinal cut points are fitted here, so the
  selection split's figures are not tuned on (with `data.calibration_fraction` = 0 the
  selection split doubles as the calibration split, as runs did before this split existed);
- test: used for neither; its figures are the honest ones. It is a cross-validation fold
  (`data.cv_fold`), a fixed fraction of the groups drawn from the seed alone
  (`data.test_fraction`), or every photo of one source (`data.hold_out_source`).

Every figure in a bundle's evaluation says which of these it was measured on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from core.manifest import CalibrationSpec
from training.common.metrics import evaluate
from training.trainer.calibration import apply_temperature
from training.trainer.config import DataConfig, TrainConfig
from training.trainer.datasets import (
    LabelledImage,
    split_by_patient,
    split_by_source,
    split_cv_fold,
    split_test_fraction,
    three_way_split,
)
from training.trainer.loop import eval_loader

SPLIT_NOTES = {
    "calibration": "calibration split: temperature, thresholds and cut points were fitted on "
                   "it, so sensitivity / specificity here are optimistic by construction",
    "selection": "selection split: chose the epoch; not used to fit thresholds",
    "test": "held-out cross-validation fold: used for neither training, epoch choice nor "
            "calibration",
}


SELECTION_AND_CALIBRATION_NOTE = (
    "selection split: chose the epoch, and temperature, thresholds and cut points were fitted "
    "on it (no separate calibration split), so every figure here is optimistic")


def split_notes(separate_calibration: bool, test_note: str | None = None) -> dict[str, str]:
    """What each split was used for, as the card states it. Without a calibration split the
    selection split also fitted the thresholds, and its note must say so; test_note: how the
    test set was chosen when it is not a cross-validation fold (see held_out_note)."""
    notes = dict(SPLIT_NOTES) | ({"test": test_note} if test_note else {})
    if separate_calibration:
        return notes
    return notes | {"selection": SELECTION_AND_CALIBRATION_NOTE}


def held_out_note(data: DataConfig) -> str | None:
    """The card's note for a test set that is not a cross-validation fold."""
    unused = "used for neither training, epoch choice nor calibration"
    if data.hold_out_source is not None:
        return f"held-out source {data.hold_out_source}: every photo of it; {unused}"
    if data.test_fraction > 0:
        return (f"fixed held-out test split ({data.test_fraction:.0%} of the patients or "
                f"examinations, drawn from the run's seed alone); {unused}")
    return None


@dataclass
class Splits:
    train: list[LabelledImage]
    selection: list[LabelledImage]
    calibration: list[LabelledImage]
    test: list[LabelledImage] = field(default_factory=list)

    @property
    def separate_calibration(self) -> bool:
        return self.calibration is not self.selection

    def summary(self) -> dict[str, int]:
        out = {"train": len(self.train), "val": len(self.selection)}
        if self.separate_calibration:
            out["calibration"] = len(self.calibration)
        if self.test:
            out["test"] = len(self.test)
        return out


def make_splits(cfg: TrainConfig, usable: list[LabelledImage]) -> Splits:
    """Patient-disjoint train / selection / calibration (/ test: a CV fold, a fixed fraction
    or a held-out source)."""
    data = cfg.data
    data.check("data")
    usable, test = split_test(cfg, usable)
    train, selection, calibration = three_way_split(usable, data.val_fraction,
                                                    data.calibration_fraction, cfg.seed)
    if data.train_fraction < 1.0:  # a learning-curve point: fewer training patients, same rest
        unused = 1.0 - data.train_fraction
        train, _ = split_by_patient(train, unused, cfg.seed + 2)
    return Splits(train, selection, calibration, test)


def split_test(cfg: TrainConfig,
               usable: list[LabelledImage]) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(rest, test) by whichever of data.cv_fold / test_fraction / hold_out_source is set
    (at most one is); the test set is drawn before anything else so that nothing else moves it."""
    data = cfg.data
    if data.cv_fold is not None:
        return split_cv_fold(usable, data.cv_folds, data.cv_fold, cfg.seed)
    if data.test_fraction > 0:
        return split_test_fraction(usable, data.test_fraction, cfg.seed)
    if data.hold_out_source is not None:
        return split_by_source(usable, data.hold_out_source)
    return usable, []


def _loader(cfg: TrainConfig, cache_folder: Path, records: list[LabelledImage],
            rows: dict[str, int]) -> DataLoader:
    return eval_loader(cfg, cache_folder, [rows[r.id] for r in records],
                       [r.grade for r in records], num_workers=0)


def score_splits(trainer, loaders, splits: Splits, cache_folder: Path,
                 rows: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(grades, logits) of the best epoch on every evaluation split (flip-averaged when the
    config says the bundle is served so)."""
    flip = trainer.cfg.flip_tta
    scored = {"selection": (loaders.val_grades, trainer.predict_logits(loaders.val, flip))}
    scored["calibration"] = scored["selection"]
    if splits.separate_calibration:
        loader = _loader(trainer.cfg, cache_folder, splits.calibration, rows)
        scored["calibration"] = (np.asarray([r.grade for r in splits.calibration]),
                                 trainer.predict_logits(loader, flip))
    if splits.test:
        loader = _loader(trainer.cfg, cache_folder, splits.test, rows)
        scored["test"] = (np.asarray([r.grade for r in splits.test]),
                          trainer.predict_logits(loader, flip))
    return scored


def calibrated_metrics(y: np.ndarray, logits: np.ndarray,
                       calibration: CalibrationSpec) -> dict[str, Any]:
    """training.common.metrics.evaluate at the bundle's own temperature, thresholds and cut points."""
    probs = apply_temperature(logits, calibration.temperature)
    return evaluate(y, probs, referable_threshold=calibration.referable_threshold,
                    vision_threatening_threshold=calibration.vision_threatening_threshold,
                    grade_thresholds=calibration.grade_thresholds,
                    vt_grade_by_probability=calibration.vt_grade_by_probability)


def held_out_metrics(cfg: TrainConfig, splits: Splits, scored: dict,
                     calibration: CalibrationSpec, run_dir: Path) -> dict[str, Any]:
    """Figures on the splits calibration did not see, each labelled with its split. The test
    fold's calibrated predictions go to test_predictions.csv for cross-validation, and the
    calibration split's to calibration_predictions.csv, so that another operating rule can be
    fitted where this one was and measured where this one was measured."""
    out: dict[str, Any] = {"split": "calibration" if splits.separate_calibration else "selection",
                           "split_notes": split_notes(splits.separate_calibration,
                                                      held_out_note(cfg.data))}
    if splits.separate_calibration:
        out["selection"] = calibrated_metrics(*scored["selection"], calibration)
    if "test" in scored:
        out["test"] = calibrated_metrics(*scored["test"], calibration)
        write_predictions(run_dir / "test_predictions.csv", splits.test,
                          apply_temperature(scored["test"][1], calibration.temperature),
                          calibration, cfg.data.cv_fold)
    if splits.separate_calibration:
        write_predictions(run_dir / "calibration_predictions.csv", splits.calibration,
                          apply_temperature(scored["calibration"][1], calibration.temperature),
                          calibration, cfg.data.cv_fold)
    return out


def write_predictions(path: Path, records: list[LabelledImage], probs: np.ndarray,
                      calibration: CalibrationSpec, fold: int | None) -> None:
    """One row per photo: calibrated probabilities and the fold's own operating rule; the
    source and DME label come last so that readers of the older columns see no change."""
    cuts = calibration.grade_thresholds
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "patient", "grade", "fold", "p0", "p1", "p2", "p3", "p4",
                         "referable_threshold", "vision_threatening_threshold", "grade_cuts",
                         "vt_grade_by_probability", "source", "dme"])
        for record, p in zip(records, probs, strict=True):
            writer.writerow([record.id, record.patient, record.grade, fold,
                             *[f"{v:.6f}" for v in p],
                             f"{calibration.referable_threshold:.6f}",
                             f"{calibration.vision_threatening_threshold:.6f}",
                             " ".join(f"{c:.6f}" for c in cuts) if cuts else "",
                             int(calibration.vt_grade_by_probability), record.source,
                             "" if record.dme is None else record.dme])
