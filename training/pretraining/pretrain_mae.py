"""MAE pretraining of a ViT encoder on unlabelled fundus photos, as RETFound did it.

    python -m training.pretraining.pretrain_mae --config training/configs/mae_tiny.yaml
    python -m training.pretraining.pretrain_mae --config training/configs/mae_tiny.yaml --resume
    torchrun --nproc_per_node 4 -m training.pretraining.pretrain_mae --config training/configs/mae_small.yaml
    python -m training.pretraining.pretrain_mae --config training/configs/mae_large.yaml \\
        --init RETFound_cfp_weights.pth          # domain-adaptive pretraining

Writes runs/<run_name>/: config.yaml, data_summary.json, history.csv, steps.csv, TensorBoard
logs, loss_curve.png, checkpoint-last.pth (+ checkpoint-<epoch>.pth) and, at the end,
mae_pretrained.pth: RETFound's layout ({"model": encoder + decoder tensors under RETFound's
names, "epoch", "config", "arch"}), so `python -m training.interchange.import_retfound` turns it into the
encoder bundle the retfound and lora tiers start from. docs/mae.md has the details.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import DRError
from training.pretraining.mae.config import load_mae_config
from training.pretraining.mae.engine import FINAL, Pretrainer
from training.trainer.distributed import init_distributed, shutdown

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def pretrain(cfg, *, resume: str | bool = False, stop_after: int | None = None,
             progress: bool = True) -> Pretrainer:
    """Run (or resume) one MAE pretraining; returns the trainer (its run_dir holds the files)."""
    info = init_distributed()
    try:
        trainer = Pretrainer(cfg, Path(cfg.out_dir) / cfg.run_name, info, progress=progress)
        if resume:
            path = resume if isinstance(resume, str) else None
            if not trainer.load_checkpoint(path):
                trainer.logger.note("no checkpoint to resume from; starting afresh")
        trainer.fit(stop_after=stop_after)
        return trainer
    finally:
        shutdown(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pretraining.pretrain_mae",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "mae_tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=10 (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue exactly from the run's checkpoint-last.pth (or this file)")
    parser.add_argument("--init", default=None, metavar="PTH",
                        help="start from a RETFound-layout checkpoint (domain-adaptive)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--source", action="append", default=None, metavar="SRC",
                        help="replace data.sources: folder, .csv, .zip or synthetic:N (repeatable)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=None)
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N epochs of this call (continue later with --resume)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key, value in (("model.init", args.init), ("device", args.device),
                       ("optim.epochs", args.epochs), ("optim.batch_size", args.batch_size)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.source:
        overrides.append("data.sources=" + json.dumps(args.source))  # JSON is YAML
    try:
        cfg = load_mae_config(args.config, overrides)
        trainer = pretrain(cfg, resume=args.resume, stop_after=args.stop_after,
                           progress=not args.no_progress)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    final = trainer.run_dir / FINAL
    if trainer.dist.is_main and final.is_file():
        last = trainer.state.history[-1] if trainer.state.history else {}
        print(f"MAE pretraining done: {final} (loss {last.get('train_loss', float('nan')):.4f}, "
              f"{last.get('img_per_s', float('nan')):.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
