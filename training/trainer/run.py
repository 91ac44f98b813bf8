"""One training run end to end: data -> cache -> split -> loop -> calibrated bundle.

Every tier's command (`python -m training.train_baseline | train_retfound | train_lora`) is this
function with a different default config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.bundle import Bundle
from core.errors import DRError
from training.trainer.config import TrainConfig, load_config, save_config
from training.trainer.datasets import load_records
from training.trainer.distill import load_teacher
from training.trainer.distributed import barrier, init_distributed, shutdown
from training.trainer.dme import calibrate_dme, check_dme_splits, dme_labels, strip_dme
from training.trainer.finalize import calibrate_and_evaluate, load_best, write_bundle
from training.trainer.image_cache import build_cache
from training.trainer.loop import StepHook, Trainer, eval_loader, make_loaders
from training.trainer.splits import held_out_metrics, make_splits, score_splits
from training.trainer.tiers import build_setup

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class RunResult:
    run_dir: Path
    bundle: Bundle | None
    metrics: dict
    history: list[dict]


def run(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
        step_hooks: Sequence[StepHook] = ()) -> RunResult:
    """step_hooks: passed to the Trainer (tests inject faults there)."""
    info = init_distributed()
    try:
        # first: a bad optim.distill_from fails before anything is written or trained
        teacher = load_teacher(cfg.optim.distill_from, cfg.preprocessing)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        run_dir = Path(cfg.out_dir) / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            save_config(cfg, run_dir / "config.yaml")
            ensure_synthetic_data(cfg)
        barrier(info)
        records, summary = load_records(cfg.data)
        if info.is_main:
            build_cache(records, cfg.preprocessing, cfg.data.cache_dir, progress=progress)
        barrier(info)
        cache = build_cache(records, cfg.preprocessing, cfg.data.cache_dir, progress=False)
        usable = [r for r, ok in zip(records, cache.ok, strict=True) if ok]
        rows = {r.id: i for i, r in enumerate(records)}
        splits = make_splits(cfg, usable)
        if cfg.model.dme_head:
            check_dme_splits(splits)
        train, val = splits.train, splits.selection
        summary |= splits.summary() | {"unreadable": len(cache.errors)}
        loaders = make_loaders(cfg, cache.folder, [rows[r.id] for r in train],
                               [r.grade for r in train], [rows[r.id] for r in val],
                               [r.grade for r in val], info,
                               train_dme=dme_labels(train, implied_negative=cfg.data.dme_implied_negative)
                               if cfg.model.dme_head else None)
        setup = build_setup(cfg)
        trainer = Trainer(cfg, setup, loaders, run_dir, info, progress=progress,
                          step_hooks=step_hooks, teacher=teacher)
        if resume and trainer.load_checkpoint():
            trainer.logger.rewrite(trainer.state.history)
            trainer.logger.note(f"resumed at epoch {trainer.state.epoch + 1}")
        elif cfg.optim.head_init == "linear_probe":
            _probe_head(cfg, setup, trainer, eval_loader(
                cfg, cache.folder, [rows[r.id] for r in train], [r.grade for r in train]))
        state = trainer.fit()
        bundle, metrics = None, {}
        if info.is_main:
            load_best(setup, run_dir)
            scored = score_splits(trainer, loaders, splits, cache.folder, rows)
            scored, dme_logit = strip_dme(scored)
            y_cal, logits = scored["calibration"]
            calibration, metrics = calibrate_and_evaluate(cfg, logits, y_cal)
            if dme_logit:
                calibration, metrics["dme"] = calibrate_dme(cfg, splits, dme_logit, calibration)
            metrics |= held_out_metrics(cfg, splits, scored, calibration, run_dir)
            bundle = write_bundle(cfg, setup, run_dir, calibration, metrics, summary)
            (run_dir / "metrics.json").write_text(json.dumps(bundle.manifest.evaluation, indent=1))
            _plots(run_dir, metrics, state.history, y_cal, logits, calibration)
        barrier(info)
        return RunResult(run_dir, bundle, metrics, state.history)
    finally:
        shutdown(info)


def _probe_head(cfg: TrainConfig, setup, trainer, loader) -> None:
    """LP-FT's first stage (training.trainer.head_probe), before the first epoch of a fresh run."""
    from training.trainer.head_probe import init_head_from_probe

    start = init_head_from_probe(setup.model, loader, trainer.device,
                                 balanced=cfg.optim.class_balance != "none")
    trainer.logger.note(f"head {start.module} initialised from a linear probe of the starting "
                        f"features on {start.photos} training photos (training accuracy "
                        f"{start.train_accuracy:.2f})")


def ensure_synthetic_data(cfg: TrainConfig) -> None:
    """Generate the synthetic APTOS-layout set once (preset "synthetic")."""
    if cfg.data.preset != "synthetic" or cfg.data.sources:
        return
    folder = Path(cfg.data.synthetic_dir)
    if (folder / "train.csv").is_file():
        return
    from core.synthetic import write_aptos_dataset

    print(f"generating {cfg.data.synthetic_n} synthetic fundus images in {folder} ...", flush=True)
    write_aptos_dataset(folder, cfg.data.synthetic_n, cfg.data.synthetic_seed,
                        size=cfg.data.synthetic_size, workers=max(1, cfg.data.num_workers))


def _plots(run_dir: Path, metrics: dict, history: list[dict], y: np.ndarray, logits: np.ndarray,
           calibration) -> None:
    from training.common.plots import confusion_matrix_png, reliability_png, training_curves_png
    from training.trainer.calibration import apply_temperature

    confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), run_dir / "confusion_matrix.png")
    reliability_png(y, apply_temperature(logits, calibration.temperature),
                    run_dir / "reliability.png")
    if history:
        training_curves_png(history, run_dir / "training_curves.png")


def main(tier: str, argv: list[str] | None = None, *,
         step_hooks: Sequence[StepHook] = ()) -> int:
    """CLI shared by the three tier commands (step_hooks: see run)."""
    parser = argparse.ArgumentParser(prog=f"python -m training.train_{tier}",
                                     description=f"Train the {tier} tier and write a bundle.")
    parser.add_argument("--config", default=str(CONFIG_DIR / f"{tier}.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    parser.add_argument("--checkpoint_path", "--checkpoint-path", default=None,
                        help="RETFound .pth or a bundle folder to start from (seed flag)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set, **{
            "model.tier": tier, "model.checkpoint_path": args.checkpoint_path,
            "optim.epochs": args.epochs, "optim.batch_size": args.batch_size,
            "optim.lr": args.lr})
        result = run(cfg, resume=args.resume, progress=not args.no_progress,
                     step_hooks=step_hooks)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.bundle is not None:
        m = result.metrics
        print(f"bundle written to {result.bundle.path}: validation QWK "
              f"{m['kappa_quadratic']:.3f}, referable sens/spec "
              f"{m['referable']['sensitivity']:.3f}/{m['referable']['specificity']:.3f}")
        if hint := base_bundle_hint(result.bundle):
            print(hint)
    return 0


def base_bundle_hint(bundle: Bundle) -> str | None:
    """A LoRA bundle loads only beside its base bundle (core.bundle.base_of); say so when the
    run wrote it anywhere else, instead of letting the dashboard or evaluation find out."""
    base = bundle.manifest.base_bundle
    if not base or (bundle.path.parent / base).is_dir():
        return None
    return (f"note: {bundle.path} is a LoRA bundle; it loads only from a folder that also "
            f"holds its base bundle {base!r}: copy both into models/ (or the folder "
            f"DR_MODELS_DIR names), or link {base!r} beside it.")
