"""The macular-oedema (DME) output: labels, its masked loss, and its own calibration.

Why a module of its own: DME is a second question asked of the same photo, with labels for only
some sources (Messidor-2's adjudicated DME, IDRiD's risk 2; EyePACS has none). Rows without a
label must teach the DME head nothing, and its operating point is fitted for sensitivity first
on the calibration split, apart from the grade's (core.manifest.CalibrationSpec.dme_*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from core.errors import ConfigError
from core.manifest import CalibrationSpec
from core.predict import N_GRADES
from training.common.metrics import binary_screening, choose_referable_threshold
from training.trainer.calibration import fit_temperature

IMPLIED_NEGATIVE_MAX_GRADE = 1  # ICDR 0-1: no lesion beyond microaneurysms, so no exudates
NO_LABEL = -1  # a row whose source has no DME label: masked out of the loss and the metrics
DME_LOSS_WEIGHT = 1.0
# what the card says the positive class is, and how IDRiD's middle risk grade was used
DME_POSITIVE_CLASS = (
    "referable DME: hard exudates within one disc diameter of the fovea (Messidor-2 "
    "adjudicated_dme = 1; IDRiD risk of macular edema 2). IDRiD risk 1 (exudates further than "
    "one disc diameter from the fovea) counts as no DME, as NHS DESP grades it M0; EyePACS has "
    "no DME label, so its photos train and test the grade only")


def dme_labels(records: Sequence[Any], *, implied_negative: bool = False) -> np.ndarray:
    """1 / 0 per record, NO_LABEL where its source grades no DME; with implied_negative, an
    unlabelled photo of ICDR grade 0-1 is 0 (no exudates by the grade's definition). Only
    training uses implied labels: calibration and every reported figure use graded DME."""
    def label(r: Any) -> int:
        if r.dme is not None:
            return int(r.dme)
        return 0 if implied_negative and r.grade <= IMPLIED_NEGATIVE_MAX_GRADE else NO_LABEL

    return np.asarray([label(r) for r in records], np.int64)


def positive_weight(labels: Sequence[int]) -> float:
    """negatives / positives among labelled training rows (BCE's pos_weight), at least 1: DME
    is the rarer answer (79 of 1,042 Messidor-2 photos), and a missed oedema is the costly one."""
    y = np.asarray(labels)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    return float(max(1.0, neg / pos)) if pos else 1.0


def masked_dme_loss(logit: torch.Tensor, target: torch.Tensor,
                    pos_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy over the rows that carry a label; exactly 0 (with a gradient path)
    when none in the batch do, so a batch of EyePACS photos leaves the DME head untouched."""
    mask = target >= 0
    if not bool(mask.any()):
        return logit.sum() * 0.0
    weight = torch.tensor(pos_weight, device=logit.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logit[mask].float(), target[mask].float(),
                                              pos_weight=weight)


def split_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(grade logits, DME logit or None) of a model's output rows."""
    if logits.shape[1] <= N_GRADES:
        return logits, None
    return logits[:, :N_GRADES], logits[:, N_GRADES]


def fit_dme_temperature(logit: np.ndarray, y: np.ndarray) -> float:
    """One temperature on the labelled rows' binary NLL: sigmoid(z / T) is softmax([0, z] / T),
    so the grade's own fit (training.trainer.calibration) does it exactly."""
    z = np.asarray(logit, np.float64)
    if len(np.unique(y)) < 2:
        return 1.0
    return fit_temperature(np.column_stack([np.zeros_like(z), z]), np.asarray(y, np.int64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def fit_dme_calibration(labels: np.ndarray, logit: np.ndarray,
                        min_sensitivity: float) -> tuple[float, float, dict[str, Any]]:
    """(temperature, threshold, figures) on the calibration split's labelled rows: the
    threshold is the highest that keeps sensitivity >= min_sensitivity there."""
    keep = labels >= 0
    y, z = labels[keep], logit[keep]
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise ValueError(f"the calibration split has {len(y)} DME-labelled photos and "
                         f"{int((y == 1).sum())} with DME: too few to fit a DME threshold; "
                         "add a source with DME labels (messidor2, idrid) or a larger split")
    temperature = fit_dme_temperature(z, y)
    p = sigmoid(z / temperature)
    threshold = float(choose_referable_threshold(y, p, min_sensitivity=min_sensitivity,
                                                 min_grade=1))
    return temperature, threshold, dme_figures(y, p, threshold) | {"temperature": temperature}


def dme_figures(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUROC, sensitivity and specificity at the threshold, with the counts they rest on."""
    s = binary_screening(y, p, min_grade=1, threshold=threshold)
    return {"photos": int(len(np.asarray(y))), "positives": s["n_positive"], "auroc": s["auroc"],
            "threshold": s["threshold"], "sensitivity": s["sensitivity"],
            "specificity": s["specificity"]}


def strip_dme(scored: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """Grade logits per split, and the DME logit per split where the model has a DME head."""
    grades, dme = {}, {}
    for split, (y, logits) in scored.items():
        grade_logits, dme_logit = split_logits(logits)
        grades[split] = (y, grade_logits)
        if dme_logit is not None:
            dme[split] = dme_logit
    return grades, dme


def calibrate_dme(cfg: Any, splits: Any, dme_logit: dict[str, np.ndarray],
                  calibration: CalibrationSpec) -> tuple[CalibrationSpec, dict]:
    """The DME output's temperature and threshold (sensitivity first) on the calibration
    split's labelled photos; the selection and test splits' figures at that threshold."""
    cal_records = splits.calibration if splits.separate_calibration else splits.selection
    temperature, threshold, figures = fit_dme_calibration(
        dme_labels(cal_records), dme_logit["calibration"], cfg.optim.min_sensitivity)
    out = {"calibration": figures, "positive_class": DME_POSITIVE_CLASS}
    for split, records in (("selection", splits.selection), ("test", splits.test)):
        labels = dme_labels(records or [])
        keep = labels >= 0
        if split in dme_logit and keep.any():
            p = sigmoid(dme_logit[split][keep] / temperature)
            out[split] = dme_figures(labels[keep], p, threshold)
    return replace(calibration, dme_temperature=temperature, dme_threshold=threshold), out


def check_dme_splits(splits: Any) -> None:
    """Before any training: a DME head needs DME-labelled photos, with and without DME, in the
    training split and in the split its threshold is fitted on (else the run would fail after
    hours, at calibration)."""
    cal = splits.calibration if splits.separate_calibration else splits.selection
    for name, records in (("training", splits.train), ("calibration", cal)):
        labels = dme_labels(records)
        pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
        if pos == 0 or neg == 0:
            raise ConfigError(
                f"model.dme_head: the {name} split has {pos} photos with DME and {neg} without; "
                "it needs both. Add a source with DME labels (messidor2, idrid) or more photos.")
