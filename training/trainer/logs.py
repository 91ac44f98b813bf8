"""Run logs: history.csv always, TensorBoard when installed, W&B (offline by default) on request."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import current as current_settings
from training.trainer.config import TrainConfig


class RunLogger:
    """Writes one row per epoch to every enabled sink; no-op on non-main DDP ranks."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool = True) -> None:
        self.enabled = enabled
        self.csv_path = run_dir / "history.csv"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.note("tensorboard is not installed; logging to history.csv only")
        if cfg.wandb:
            self._wandb = _start_wandb(run_dir, cfg)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        _append_csv(self.csv_path, row)
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["epoch"])
        shown = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        print(f"epoch {row['epoch'] + 1}: {shown}", flush=True)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """After a resume: the CSV holds exactly the checkpoint's epochs (no duplicates)."""
        if not self.enabled:
            return
        self.csv_path.unlink(missing_ok=True)
        for row in history:
            _append_csv(self.csv_path, row)

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _start_wandb(run_dir: Path, cfg: TrainConfig):
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError("--wandb needs the wandb package (pip install wandb); it runs in "
                          "offline mode unless WANDB_MODE says otherwise") from exc
    return wandb.init(project="dr-screening", name=cfg.run_name, dir=str(run_dir),
                      config=cfg.to_dict(), mode=current_settings().wandb_mode)
