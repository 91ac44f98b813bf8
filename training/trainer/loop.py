"""The one training loop for all tiers.

AMP (bf16 where the GPU has it), channels_last for CNNs, optional torch.compile, gradient
accumulation and clipping, warmup + cosine or plateau schedule, early stopping on validation
quadratic kappa, an atomic checkpoint every epoch with exact resume, a NaN guard, progress bars
and CSV / TensorBoard / optional W&B logs. The best epoch becomes a bundle (training.trainer.finalize).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.devices import resolve_device
from core.errors import ConfigError
from core.predict import flip_averaged_logits
from training.common.metrics import evaluate
from training.trainer.config import TrainConfig
from training.trainer.data import CachedFundusDataset, EpochSampler, EpochTagged, class_weights
from training.trainer.distill import Teacher, distill_loss, load_teacher
from training.trainer.distributed import DistInfo
from training.trainer.dme import DME_LOSS_WEIGHT, N_GRADES, masked_dme_loss, positive_weight
from training.trainer.logs import RunLogger
from training.trainer.tiers import TierSetup

MAX_BAD_STEPS = 10
StepHook = Callable[[int], None]  # called after every batch with the optimiser step count
# What a resumed run may change: when to stop, and where the outputs go. Anything else (data,
# model, learning rate...) would silently mix two experiments in one set of weights.
RESUMABLE_CHANGES = frozenset({
    "optim.epochs", "optim.patience", "data.num_workers", "device", "tensorboard", "wandb",
    "bundle_dir", "bundle_name", "version"})


@dataclass
class LoopState:
    """Everything an exact resume needs besides the model and optimiser."""

    epoch: int = 0  # next epoch to run
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    plateau_scale: float = 1.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_ds: CachedFundusDataset
    sampler: EpochSampler
    val_grades: np.ndarray


def make_loaders(cfg: TrainConfig, cache_folder: Path, train_rows, train_grades, val_rows,
                 val_grades, dist_info: DistInfo, train_dme: Sequence[int] | None = None) -> Loaders:
    """train_dme: DME labels of the training rows (-1: none) for a model with a DME head."""
    spec = cfg.preprocessing
    train_ds = CachedFundusDataset(cache_folder, train_rows, train_grades, spec, train=True,
                                   seed=cfg.seed, augment=cfg.data.augment, dme=train_dme)
    sampler = EpochSampler(train_grades, cfg.seed, balanced=cfg.optim.class_balance == "sampler",
                           rank=dist_info.rank, world_size=dist_info.world_size)
    workers = cfg.data.num_workers
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    train = DataLoader(train_ds, batch_size=cfg.optim.batch_size, sampler=EpochTagged(sampler),
                       drop_last=len(train_ds) >= 2 * cfg.optim.batch_size, **common)
    val = eval_loader(cfg, cache_folder, val_rows, val_grades, **common)
    return Loaders(train, val, train_ds, sampler, np.asarray(val_grades))


def eval_loader(cfg: TrainConfig, cache_folder: Path, rows, grades, **loader_kwargs) -> DataLoader:
    """Unaugmented, in order: the loader of every split that is scored, not trained on."""
    dataset = CachedFundusDataset(cache_folder, rows, grades, cfg.preprocessing, train=False,
                                  seed=cfg.seed)
    return DataLoader(dataset, batch_size=cfg.optim.batch_size * 2, shuffle=False,
                      **loader_kwargs)


class Trainer:
    """Runs epochs for one TierSetup; checkpointing and logging included."""

    def __init__(self, cfg: TrainConfig, setup: TierSetup, loaders: Loaders, run_dir: Path,
                 dist_info: DistInfo, progress: bool = True,
                 step_hooks: Sequence[StepHook] = (), teacher: Teacher | None = None) -> None:
        """step_hooks: callbacks after every batch (tests inject faults here, e.g. a kill).
        teacher: soft targets (training.trainer.distill); loaded here from `optim.distill_from` when
        that is set and none is given."""
        self.cfg, self.setup, self.loaders, self.run_dir = cfg, setup, loaders, run_dir
        self.dist, self.progress = dist_info, progress
        self.step_hooks = tuple(step_hooks)
        self.device = _device(cfg, dist_info)
        fast_cpu = cfg.optim.cpu_fast and self.device.type == "cpu"
        self.channels_last = setup.channels_last and (self.device.type == "cuda" or fast_cpu)
        self.model = setup.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = _amp_dtype(cfg, self.device)
        # what scores splits (epoch choice, calibration, test): fp32 on the CPU, as served
        self.eval_amp_dtype = self.amp_dtype if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.base_lr = _base_lr(cfg)
        self.optimizer = torch.optim.AdamW(
            setup.param_groups(self.base_lr, cfg.optim.weight_decay, cfg.optim.layer_decay,
                               head_lr_scale=cfg.optim.head_lr_scale),
            lr=self.base_lr)
        weight = class_weights(loaders.train_ds.grades) if cfg.optim.class_balance == "loss" else None
        self.loss_fn = nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(self.device),
            label_smoothing=cfg.optim.label_smoothing)
        dme = loaders.train_ds.dme
        self.dme_pos_weight = positive_weight(dme) if dme is not None else None
        self.steps_per_epoch = max(1, len(loaders.train) // cfg.optim.grad_accum)
        self.state = LoopState()
        self.logger = RunLogger(run_dir, cfg, enabled=dist_info.is_main)
        if teacher is None:
            teacher = load_teacher(cfg.optim.distill_from, cfg.preprocessing)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        if self.teacher is not None:
            self.logger.note(f"distilling from {self.teacher.label} ({cfg.optim.distill_from}): "
                             f"alpha {cfg.optim.distill_alpha}, T {cfg.optim.distill_temperature}")
        if fast_cpu:
            self.logger.note("CPU fast path: " + _fast_path_note(cfg, self.amp_dtype))
        self._wrapped: nn.Module | None = None
        self._trainable_signature: tuple | None = None

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        payload = {"model": self.setup.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scaler": self.scaler.state_dict(), "loop": _state_dict(self.state),
                   "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict()}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a crash leaves the previous epoch's

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = payload.get("config")
        saved = None if saved is None else with_defaults(saved, TrainConfig().to_dict())
        changed = sorted(set(config_changes(saved, self.cfg.to_dict())) - RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"{self.checkpoint_path} was written with other settings ({', '.join(changed)}). "
                "Resume with the run's own config (its config.yaml), or start a new run_name.")
        self.setup.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = _load_state(payload["loop"])
        torch.set_rng_state(payload["torch_rng"])
        return True

    # -- epochs -------------------------------------------------------------------------------
    def fit(self) -> LoopState:
        cfg = self.cfg
        while self.state.epoch < cfg.optim.epochs:
            epoch = self.state.epoch
            train_loss = self.train_epoch(epoch)
            logits = self.predict_logits(self.loaders.val)[:, :N_GRADES]
            probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
            metrics = evaluate(self.loaders.val_grades, probs)
            score = selection_score(metrics, cfg.optim.select_metric)
            row = {"epoch": epoch, "train_loss": train_loss,
                   "val_kappa_quadratic": float(metrics["kappa_quadratic"] or 0.0),
                   "val_selection_score": score,
                   "val_accuracy": metrics["accuracy"], "val_macro_auroc": metrics["macro_auroc"],
                   "val_referable_auroc": metrics["referable"]["auroc"],
                   "lr": self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_scale"]}
            self.state.history.append(row)
            self.logger.log_epoch(row)
            self._track_best(epoch, score)
            self.state.epoch = epoch + 1
            self.save_checkpoint()
            if self.state.bad_epochs >= cfg.optim.patience:
                self.logger.note(f"early stopping after epoch {epoch + 1}: no "
                                 f"{cfg.optim.select_metric} gain for "
                                 f"{cfg.optim.patience} epochs")
                break
        self.logger.close()
        return self.state

    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.setup.set_epoch(epoch)
        model = self._train_module()
        model.train()
        self.loaders.sampler.set_epoch(epoch)
        self.loaders.train_ds.set_epoch(epoch)
        losses, bad = [], 0
        bar = tqdm(self.loaders.train, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                   disable=not (self.progress and self.dist.is_main), leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(bar):
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype,
                                enabled=self.amp_dtype is not None):
                loss = self._loss(model(x), y, x) / cfg.optim.grad_accum
            if not torch.isfinite(loss):
                bad += 1
                self.optimizer.zero_grad(set_to_none=True)
                if bad >= MAX_BAD_STEPS:
                    raise FloatingPointError(
                        f"loss was not finite for {bad} steps (epoch {epoch}); lower optim.lr, "
                        "enable optim.clip_grad, or check the data")
                continue
            self.scaler.scale(loss).backward()
            if (i + 1) % cfg.optim.grad_accum == 0:
                self._optimizer_step()
            losses.append(loss.detach().item() * cfg.optim.grad_accum)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            for hook in self.step_hooks:
                hook(self.state.step)
        return float(np.mean(losses)) if losses else float("nan")

    def _optimizer_step(self) -> None:
        self._set_lr()
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.setup.model.parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    @torch.no_grad()
    def predict_logits(self, loader: DataLoader, flip_tta: bool = False) -> np.ndarray:
        """Logits in loader order; flip_tta averages them with the mirror image's, as
        core.predict.Predictor does for a bundle calibrated that way."""
        model = self.setup.model
        model.eval()
        out = []
        for x, _ in loader:
            x = self._to_device(x)
            with torch.autocast(self.device.type, dtype=self.eval_amp_dtype,
                                enabled=self.eval_amp_dtype is not None):
                logits = flip_averaged_logits(model, x) if flip_tta else model(x).float()
            out.append(logits.cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 5), np.float32)

    # -- helpers ------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, y: torch.Tensor,
              x: torch.Tensor | None = None) -> torch.Tensor:
        """The hard-label loss; with a teacher (and the batch `x`) mixed with its soft targets;
        with a DME head (targets (grade, dme)), plus its BCE on the rows that carry a label."""
        dme_loss = None
        if y.dim() == 2:
            dme_loss = masked_dme_loss(logits[:, N_GRADES], y[:, 1], self.dme_pos_weight or 1.0)
            y, logits = y[:, 0], logits[:, :N_GRADES]
        loss = self.loss_fn(logits.float(), y)
        if self.cfg.optim.ordinal:  # pull the expected grade towards the label (QWK-friendly)
            grades = torch.arange(5, device=logits.device, dtype=torch.float32)
            expected = (torch.softmax(logits.float(), 1) * grades).sum(1)
            loss = loss + 0.5 * torch.mean((expected - y.float()) ** 2)
        if self.teacher is not None and x is not None:
            o = self.cfg.optim
            loss = distill_loss(logits, self.teacher.logits(x), loss, o.distill_alpha,
                                o.distill_temperature)
        if dme_loss is not None:
            loss = loss + DME_LOSS_WEIGHT * dme_loss
        return loss

    def _set_lr(self) -> None:
        lr = _scheduled_lr(self.cfg, self.base_lr, self.state, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]

    def _track_best(self, epoch: int, score: float) -> None:
        state = self.state
        if score > state.best_score + 1e-6:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            if self.dist.is_main:
                from safetensors.torch import save_file

                tensors = {k: v.detach().cpu().contiguous().clone()
                           for k, v in self.setup.model.state_dict().items()}
                save_file(tensors, str(self.run_dir / "best.safetensors"))
        else:
            state.bad_epochs += 1
            if self.cfg.optim.schedule == "plateau" and state.bad_epochs % 2 == 0:
                state.plateau_scale *= 0.5

    def _train_module(self) -> nn.Module:
        """The module to call in training: DDP-wrapped when distributed (re-wrapped when the
        set of trainable parameters changes, e.g. at the baseline's unfreeze)."""
        model = self.setup.model
        if self.cfg.optim.compile and self._wrapped is None and not self.dist.enabled:
            self._wrapped = torch.compile(model)
        if not self.dist.enabled:
            return self._wrapped or model
        signature = tuple(p.requires_grad for p in model.parameters())
        if self._wrapped is None or signature != self._trainable_signature:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(model, device_ids=ids)
            self._trainable_signature = signature
        return self._wrapped

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def selection_score(metrics: dict, name: str) -> float:
    """The number early stopping maximises (0 where undefined, e.g. one class present)."""
    value = metrics["referable"]["auroc"] if name == "referable_auroc" else metrics[name]
    return float(value or 0.0)


def _scheduled_lr(cfg: TrainConfig, base_lr: float, state: LoopState, steps_per_epoch: int) -> float:
    """Linear warmup, then half-cycle cosine to min_lr (or plateau halvings)."""
    o = cfg.optim
    warmup = o.warmup_epochs * steps_per_epoch
    total = max(o.epochs * steps_per_epoch, 1)
    step = state.step
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if o.schedule == "plateau":
        return max(base_lr * state.plateau_scale, o.min_lr)
    progress = (step - warmup) / max(total - warmup, 1)
    return o.min_lr + (base_lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _base_lr(cfg: TrainConfig) -> float:
    o = cfg.optim
    return o.blr * o.batch_size * o.grad_accum / 256 if o.blr else o.lr


def _device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if info.enabled and torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return resolve_device(cfg.device)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The training steps' autocast dtype: the GPU's AMP, bf16 on a CPU with native bf16
    under optim.cpu_fast, otherwise none (fp32)."""
    if device.type == "cpu" and cfg.optim.cpu_fast:
        return torch.bfloat16 if cfg.optim.cpu_bf16 and cpu_has_native_bf16() else None
    if not cfg.optim.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _fast_path_note(cfg: TrainConfig, amp_dtype: torch.dtype | None) -> str:
    if amp_dtype is not None:
        what = "channels_last, bf16 autocast for training steps"
    elif not cfg.optim.cpu_bf16:
        what = "channels_last only (optim.cpu_bf16 false)"
    else:
        what = "no native bf16 on this CPU, channels_last only"
    return what + "; scoring in fp32"


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32, so the fast path keeps fp32 and uses channels_last alone."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def config_changes(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (a checkpoint without a config: nothing to compare)."""
    if old is None:
        return []
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def with_defaults(saved: dict, defaults: dict) -> dict:
    """A checkpoint's config with the fields added since it was written at their defaults, so
    a new field left at its default is no change and the run still resumes."""
    out = dict(defaults)
    for key, value in saved.items():
        base = defaults.get(key)
        out[key] = with_defaults(value, base) if isinstance(value, dict) and isinstance(
            base, dict) else value
    return out


def _state_dict(state: LoopState) -> dict:
    return {"epoch": state.epoch, "step": state.step, "best_score": state.best_score,
            "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
            "plateau_scale": state.plateau_scale, "history": state.history}


def _load_state(data: dict) -> LoopState:
    return LoopState(**data)
