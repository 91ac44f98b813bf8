"""The MAE pretraining loop: RETFound's recipe, exact resume, the trainers' logs.

- AdamW (betas 0.9, 0.95); weight decay on weight matrices only (not on norms, biases,
  pos_embed, cls_token, mask_token); lr = blr x effective batch / 256; per-iteration linear
  warmup then half-cycle cosine to min_lr (MAE's ``util/lr_sched.py``).
- bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing), fp32 on the CPU.
- torchrun: DDP (nccl on CUDA, gloo on the CPU) with a DistributedSampler; rank 0 builds the
  crop cache, writes logs and checkpoints.
- Exact resume: masks come from a generator seeded per (seed, micro-batch, rank), augmentation
  per (seed, epoch, photo), and every checkpoint holds model, optimizer, scaler, progress and
  the RNG states, so N epochs straight equal k epochs + resume + N-k epochs bit for bit.
- Every epoch: ``history.csv`` (loss, lr, img/s), TensorBoard, ``steps.csv`` (loss per step),
  ``checkpoint-last.pth``; every ``save_every`` epochs ``checkpoint-<epoch>.pth``; at the end
  ``mae_pretrained.pth`` ({"model", "epoch", "config", "arch"}) and the loss-curve PNGs. Every
  one of these .pth files is in RETFound's released layout and loads with weights_only=True.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.devices import resolve_device
from core.errors import CheckpointError, ConfigError
from training.pretraining.mae.config import MAEConfig, save_mae_config
from training.pretraining.mae.data import EpochTagged, UnlabelledFundus, build_crops, list_items
from training.pretraining.mae.model import MaskedAutoencoderViT, build_mae
from training.trainer.distributed import DistInfo, barrier
from training.trainer.logs import RunLogger

FORMAT = "retfound-mae/1"
LAST = "checkpoint-last.pth"
FINAL = "mae_pretrained.pth"
NO_DECAY = ("pos_embed", "cls_token", "mask_token", "decoder_pos_embed")
# What a resumed run may change: when to stop, where outputs go, how data is fed.
RESUMABLE = frozenset({"optim.epochs", "optim.save_every", "data.num_workers", "data.cache_dir",
                       "device", "tensorboard", "wandb"})


@dataclass
class Progress:
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps done
    history: list[dict] = field(default_factory=list)


class Pretrainer:
    """Owns the model, optimizer, data and logs of one MAE run."""

    def __init__(self, cfg: MAEConfig, run_dir: Path, dist: DistInfo | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist or DistInfo()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = _device(cfg, self.dist)
        self.show = progress and self.dist.is_main
        _seed_everything(cfg.seed)
        self.logger = RunLogger(self.run_dir, cfg, enabled=self.dist.is_main)
        self.model = build_mae(cfg.arch(), cfg.preprocessing.input_size, cfg.model.norm_pix_loss)
        if cfg.model.init:
            for note in self.model.load_init(cfg.model.init):
                self.logger.note(note)
        self.model.grad_checkpointing = cfg.model.grad_checkpointing
        self.model.to(self.device)
        self.amp_dtype = _amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        o = cfg.optim
        self.eff_batch = o.batch_size * o.accum_iter * self.dist.world_size
        self.lr = o.lr if o.lr is not None else o.blr * self.eff_batch / 256
        self.optimizer = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=self.lr,
                                           betas=(0.9, 0.95))
        self.state = Progress()
        self.dataset, self.sampler, self.loader, self.data_summary = self._data()
        self._module: nn.Module | None = None
        if self.dist.is_main:
            save_mae_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "data_summary.json").write_text(json.dumps(self.data_summary, indent=1))

    # ------------------------------------------------------------------ data
    def _data(self):
        cfg = self.cfg
        items, skipped = list_items(cfg)
        if self.dist.is_main or cfg.data.cache_dir is None:
            crops = build_crops(items, cfg, progress=self.show)
        barrier(self.dist)
        if not self.dist.is_main and cfg.data.cache_dir is not None:
            crops = build_crops(items, cfg)
        summary = crops.summary(skipped) | {"sources": list(cfg.data.sources), "listed": len(items)}
        if summary["skipped"]:
            first = next(iter(crops.errors.items()), None)
            self.logger.note(f"warning: skipped {summary['skipped']} of "
                             f"{len(items) + sum(skipped.values())} photos {summary['reasons']}"
                             + (f"; first: {first[0]}: {first[1]}" if first else ""))
        dataset = UnlabelledFundus(crops, cfg, train=True)
        per_rank = math.ceil(len(dataset) / self.dist.world_size)
        if per_rank < cfg.optim.batch_size:
            raise ConfigError(f"{len(dataset)} usable photos give {per_rank} per process, fewer "
                              f"than one batch of {cfg.optim.batch_size}; add photos or lower "
                              "optim.batch_size.")
        sampler = EpochTagged(len(dataset), cfg.seed, self.dist.rank, self.dist.world_size)
        workers = cfg.data.num_workers
        loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler,
                            drop_last=True, num_workers=workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=workers > 0,
                            prefetch_factor=4 if workers else None)
        self.logger.note(f"MAE {cfg.model.size}: {len(dataset)} photos, {len(loader)} steps of "
                         f"{cfg.optim.batch_size} x {self.dist.world_size} process(es) per epoch, "
                         f"lr {self.lr:.3g}, device {self.device}")
        return dataset, sampler, loader, summary

    # ------------------------------------------------------------------ epochs
    def fit(self, stop_after: int | None = None) -> Progress:
        """Train up to optim.epochs (or ``stop_after`` epochs of this call, for time-boxed runs)."""
        done_here = 0
        while self.state.epoch < self.cfg.optim.epochs:
            if stop_after is not None and done_here >= stop_after:
                break
            row, steps = self.train_epoch(self.state.epoch)
            self.state.epoch += 1
            self.state.history.append(row)
            if self.dist.is_main:
                _append_rows(self.run_dir / "steps.csv", steps)
                self.logger.log_epoch(row)
            self.save_checkpoint()
            done_here += 1
        if self.dist.is_main:
            if self.state.epoch >= self.cfg.optim.epochs:
                self.save_final()
            self.plots()
        barrier(self.dist)
        self.logger.close()
        return self.state

    def train_epoch(self, epoch: int) -> tuple[dict, list[dict]]:
        cfg, model = self.cfg, self._train_module()
        model.train()
        self.sampler.set_epoch(epoch)
        accum, n_batches = cfg.optim.accum_iter, len(self.loader)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, seen, compute_s, steps = 0.0, 0, 0.0, []
        start = time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False,
                   disable=not self.show)
        for it, imgs in enumerate(bar):
            t0 = time.perf_counter()
            if it % accum == 0:
                self._set_lr(epoch + it / n_batches)
            imgs = imgs.to(self.device, non_blocking=True)
            generator = self._mask_generator(epoch * n_batches + it)
            with self._autocast():
                loss, _, _ = model(imgs, cfg.model.mask_ratio, generator)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"MAE loss is {value} at epoch {epoch}, step {it}; lower "
                                         "optim.blr or set optim.clip_grad.")
            self.scaler.scale(loss / accum).backward()
            if (it + 1) % accum == 0:
                self._optimizer_step()
                steps.append({"step": self.state.step, "epoch": epoch, "loss": value,
                              "lr": self.optimizer.param_groups[0]["lr"]})
            loss_sum += value
            seen += imgs.shape[0]
            bar.set_postfix(loss=f"{value:.3f}")
            compute_s += time.perf_counter() - t0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        stats = self._reduce([loss_sum, float(len(self.loader)), float(seen)])
        images = stats[2]
        row = {"epoch": epoch, "train_loss": stats[0] / max(stats[1], 1.0),
               "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": images / wall,
               "compute_img_per_s": images / max(compute_s, 1e-9) if self.dist.world_size == 1
               else images / wall, "epoch_s": wall, "step": self.state.step}
        return row, steps

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.clip_grad
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _set_lr(self, epoch_f: float) -> None:
        lr = scheduled_lr(self.cfg, self.lr, epoch_f)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _mask_generator(self, micro_batch: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.cfg.seed, micro_batch, self.dist.rank])
        return torch.Generator(device=self.device).manual_seed(int(seed.generate_state(1)[0]))

    def _reduce(self, values: list[float]) -> list[float]:
        if not self.dist.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def _train_module(self) -> nn.Module:
        if not self.dist.enabled:
            return self.model
        if self._module is None:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self._module = DistributedDataParallel(self.model, device_ids=ids)
        return self._module

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict:
        return {"model": _cpu_state(self.model), "epoch": self.state.epoch - 1,
                "config": self.cfg.to_dict(), "arch": self.arch(), "format": FORMAT}

    def arch(self) -> dict:
        return self.cfg.arch() | {"img_size": self.cfg.preprocessing.input_size,
                                  "norm_pix_loss": self.cfg.model.norm_pix_loss}

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        payload = self._payload() | {
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.state.step, "next_epoch": self.state.epoch,
            "history": self.state.history, "rng": _rng_state()}
        _atomic_save(payload, self.run_dir / LAST)
        if self.state.epoch % self.cfg.optim.save_every == 0:
            _atomic_save(payload, self.run_dir / f"checkpoint-{self.state.epoch - 1}.pth")

    def save_final(self) -> Path:
        path = self.run_dir / FINAL
        _atomic_save(self._payload(), path)
        self.logger.note(f"wrote {path} (RETFound layout: encoder + decoder under 'model')")
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Resume from ``path`` (default: the run's checkpoint-last.pth); False if none."""
        path = Path(path) if path else self.run_dir / LAST
        if not path.is_file():
            return False
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, truncated file, not a checkpoint at all
            raise CheckpointError(f"{path} cannot be read as a weights-only checkpoint "
                                  f"({str(exc).splitlines()[0][:200]}).") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or "optimizer" not in payload:
            raise CheckpointError(f"{path} is not a resumable MAE checkpoint of this trainer; "
                                  "use --init to start from its weights instead.")
        changed = sorted(set(_changes(payload["config"], self.cfg.to_dict())) - RESUMABLE)
        if changed:
            raise ConfigError(f"{path} was written with other settings ({', '.join(changed)}); "
                              "resume with the run's own config.yaml, or start a new run_name.")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = Progress(payload["next_epoch"], payload["step"], list(payload["history"]))
        _set_rng_state(payload["rng"])
        if self.dist.is_main:
            self.logger.rewrite(self.state.history)
            _truncate_steps(self.run_dir / "steps.csv", self.state.step)
        self.logger.note(f"resumed from {path.name} at epoch {self.state.epoch + 1}")
        return True

    def plots(self) -> None:
        from training.pretraining.mae.figure import loss_curve_png

        if self.state.history:
            loss_curve_png(self.run_dir / "steps.csv", self.state.history,
                           self.run_dir / "loss_curve.png")


# ---------------------------------------------------------------------- helpers


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on weight matrices, none on norms, biases and tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # the fixed sin-cos tables
        (no_decay if param.ndim <= 1 or name in NO_DECAY else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def scheduled_lr(cfg: MAEConfig, lr: float, epoch: float) -> float:
    """MAE's lr_sched: linear warmup over warmup_epochs, then half-cycle cosine to min_lr."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return lr * epoch / o.warmup_epochs
    span = max(o.epochs - o.warmup_epochs, 1e-9)
    return o.min_lr + (lr - o.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - o.warmup_epochs)
                                                               / span))


def _device(cfg: MAEConfig, dist: DistInfo) -> torch.device:
    if dist.enabled and torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        return torch.device("cuda", dist.local_rank)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use --device cpu or auto.")
    return device


def _amp_dtype(cfg: MAEConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.optim.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cpu_state(model: MaskedAutoencoderViT) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _atomic_save(payload: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _append_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _truncate_steps(path: Path, last_step: int) -> None:
    """After a resume: drop step rows written after the checkpoint (a crash between the two)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
    path.unlink()
    _append_rows(path, rows)
