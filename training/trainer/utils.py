"""The guide's utilities (`scripts.utils` there): thin public names over what the project has.

Nothing is computed twice: metrics come from `training.common.metrics`, the figure from
`training.common.plots`, the data pipeline is the trainers' own (cache -> patient split -> loaders), and
checkpoints use the trainer's file layout (`model`, `optimizer`, ... in one `torch.save`, written
atomically, read back with `weights_only=True`), so a run's `checkpoint.pt` loads here too.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import CheckpointError
from training.common.metrics import N_GRADES, confusion_matrix, evaluate
from training.common.plots import confusion_matrix_png
from training.trainer.config import Config, TrainConfig, load_config

__all__ = [
    "calculate_metrics",
    "count_parameters",
    "create_data_loaders",
    "load_checkpoint",
    "plot_confusion_matrix",
    "save_checkpoint",
    "set_seed",
]

_GRADE_ONLY_METRICS = ("n", "class_counts", "accuracy", "kappa_quadratic", "kappa",
                       "per_class_recall", "confusion_matrix")


def set_seed(seed: int = 42, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices), as every training run does with `cfg.seed`.

    `deterministic=True` also asks cuDNN for deterministic kernels (slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def count_parameters(model: nn.Module, trainable_only: bool = False) -> tuple[int, int] | int:
    """(total, trainable) parameter counts, or only the trainable count."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable if trainable_only else (total, trainable)


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int,
                    path: str | Path, metrics: dict[str, Any] | None = None,
                    **extra: Any) -> Path:
    """Write `{model, optimizer, epoch, metrics, **extra}` atomically (a crash keeps the old file).

    `extra` must be tensors or plain Python values: `load_checkpoint` reads without pickled code.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "epoch": epoch, "metrics": metrics or {}, **extra}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu", strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint from `save_checkpoint` (or a run's checkpoint.pt) into `model`.

    Returns the other entries (epoch, metrics, ...). Read with `weights_only=True`: a file that
    needs arbitrary pickled objects is refused with CheckpointError, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for junk
        raise CheckpointError(f"Cannot read {path} as a weights-only checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} has no 'model' entry; not a checkpoint written here")
    model.load_state_dict(payload["model"], strict=strict)
    if optimizer is not None and "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    return {k: v for k, v in payload.items() if k not in ("model", "optimizer")}


def calculate_metrics(y_true: Any, y_pred_or_probs: Any, **thresholds: Any) -> dict[str, Any]:
    """The trainers' validation metrics (`training.common.metrics.evaluate`) for (N, 5) probabilities.

    Predicted grades (shape (N,)) are scored as one-hot probabilities and only what grades
    alone define is kept: n, accuracy, both kappas, per-class recall, confusion matrix.
    `thresholds` go to `evaluate`.
    """
    scores = np.asarray(y_pred_or_probs)
    if scores.ndim == 2:
        return evaluate(y_true, scores, **thresholds)
    one_hot = np.eye(N_GRADES)[scores.astype(np.int64).reshape(-1)]
    full = evaluate(y_true, one_hot, **thresholds)
    return {k: full[k] for k in _GRADE_ONLY_METRICS}


def plot_confusion_matrix(y_true: Any, y_pred: Any, save_path: str | Path) -> Path:
    """The run folders' confusion-matrix PNG for these grades; returns the file written."""
    return confusion_matrix_png(confusion_matrix(y_true, y_pred), save_path)


def create_data_loaders(config: TrainConfig | Config | str | Path,
                        progress: bool = False) -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders exactly as a training run builds them from this config.

    Accepts a TrainConfig, a guide `Config`, or a YAML path (either layout). Runs the trainers'
    pipeline: labels CSV -> preprocessed image cache -> patient-disjoint splits -> loaders;
    `val` is the run's selection split (the one that chooses the epoch).
    """
    from training.trainer.datasets import load_records
    from training.trainer.distributed import DistInfo
    from training.trainer.image_cache import build_cache
    from training.trainer.loop import make_loaders
    from training.trainer.run import ensure_synthetic_data
    from training.trainer.splits import make_splits

    if isinstance(config, Config):
        cfg = config.to_train_config()
    elif isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = load_config(config)
    ensure_synthetic_data(cfg)
    records, _ = load_records(cfg.data)
    cache = build_cache(records, cfg.preprocessing, cfg.data.cache_dir, progress=progress)
    usable = [r for r, ok in zip(records, cache.ok, strict=True) if ok]
    rows = {r.id: i for i, r in enumerate(records)}
    splits = make_splits(cfg, usable)
    train, val = splits.train, splits.selection
    loaders = make_loaders(cfg, cache.folder, [rows[r.id] for r in train],
                           [r.grade for r in train], [rows[r.id] for r in val],
                           [r.grade for r in val], DistInfo())
    return loaders.train, loaders.val
