"""Hyper-parameter search with Optuna over the one training loop.

    python -m training.tuning.hpo --config training/configs/lora.yaml --trials 20 \
        [--set key=value ...] [--storage sqlite:///hpo.db] [--study NAME] [--search lr,dropout]

The model-architecture guide's command line works too: `--checkpoint-path PATH --data-csv CSV
--data-img-dir DIR --n-trials N [--wandb]` are shorthands for `--set model.checkpoint_path=PATH
--set data.csv=CSV --set data.images=DIR --trials N [--set wandb=true]` (an explicit --set of
the same key wins). For the LoRA tier a RETFound .pth is imported once into the study folder
(<study>/retfound-base, an encoder bundle beside best_bundle/), since LoRA trains over a bundle.

Search space (the seed's ranges): lr log-uniform [1e-5, 1e-3] ([1e-5, 3e-3] for the baseline
CNN, which tolerates larger steps), batch size {8, 16, 32}, dropout [0, 0.5], and for the LoRA
tier only lora_r {4, 8, 16, 32} and lora_alpha {8, 16, 32, 64}. "dropout" is the regulariser
each tier has: model.dropout_rate (baseline head), model.head_dropout (LoRA head),
model.drop_path_rate (RETFound full fine-tuning, which has no head dropout setting). A searched
value overrides the same key given with --set; `--search` restricts what is searched.

Objective: validation quadratic kappa of the trial's best epoch (what the loop's early stopping
tracks). Every epoch's kappa is reported to a MedianPruner (5 startup trials, 1 warm-up epoch)
through the smallest hook that does not touch training/trainer/loop.py: a Trainer subclass whose
`_track_best` also calls back. Trials run one after another in one process (no torchrun) with
the same seed, so they share the split and differ only in hyper-parameters. A trial whose loss
diverges (FloatingPointError) is recorded as failed and the search goes on.

Outputs in <out_dir>/<study>/: trial-NNN/ run dirs (config.yaml, history.csv, metrics.json),
results.md + results.csv (one row per trial), and the best trial's bundle copied to
best_bundle/ (or --set bundle_dir=...). Only the best-so-far trial keeps a bundle and no trial
keeps checkpoint.pt, so a 20-trial ViT-L study does not fill the disk. A LoRA bundle loads only
beside its base bundle: use --set bundle_dir=models/<name> for one the dashboard can use.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.archs.tiers import get_tier
from core.bundle import Bundle, load_bundle
from core.errors import ConfigError, DRError
from training.interchange.import_retfound import import_retfound
from training.trainer.config import TrainConfig, load_config, save_config
from training.trainer.datasets import load_records, split_by_patient
from training.trainer.distributed import DistInfo
from training.trainer.finalize import calibrate_and_evaluate, load_best, write_bundle
from training.trainer.image_cache import build_cache
from training.trainer.loop import Trainer, make_loaders
from training.trainer.run import CONFIG_DIR, ensure_synthetic_data
from training.trainer.tiers import build_setup

BATCH_SIZES = (8, 16, 32)
LORA_R = (4, 8, 16, 32)
LORA_ALPHA = (8, 16, 32, 64)
DROPOUT_RANGE = (0.0, 0.5)
ALL_PARAMS = ("lr", "batch_size", "dropout", "lora_r", "lora_alpha")
# Per tier (core.archs.tier.Tier): which of these it searches (`search`), its lr range
# (`lr_range`) and the config key its "dropout" sets (`dropout_key`).

OnEpoch = Callable[[int, float], None]


# ----------------------------------------------------------------------------- search space
def tier_params(tier: str, search: Sequence[str] | None = None) -> tuple[str, ...]:
    """The parameters searched for a tier (LoRA ones only where the tier searches them)."""
    names = tuple(search) if search else ALL_PARAMS
    unknown = sorted(set(names) - set(ALL_PARAMS))
    if unknown:
        raise ConfigError(f"--search: unknown parameters {unknown}; choose from {list(ALL_PARAMS)}")
    return tuple(n for n in names if n in get_tier(tier).search)


def suggest_params(trial: Any, tier: str, names: Sequence[str]) -> dict[str, Any]:
    """Ask the Optuna trial for one value per searched parameter."""
    params: dict[str, Any] = {}
    for name in names:
        if name == "lr":
            params[name] = trial.suggest_float("lr", *get_tier(tier).lr_range, log=True)
        elif name == "batch_size":
            params[name] = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
        elif name == "dropout":
            params[name] = trial.suggest_float("dropout", *DROPOUT_RANGE)
        elif name == "lora_r":
            params[name] = trial.suggest_categorical("lora_r", list(LORA_R))
        elif name == "lora_alpha":
            params[name] = trial.suggest_categorical("lora_alpha", list(LORA_ALPHA))
    return params


def param_overrides(tier: str, params: dict[str, Any]) -> list[str]:
    """Trial parameters as `--set` strings (a searched lr switches RETFound's blr rule off)."""
    out = []
    for name, value in params.items():
        if name == "lr":
            out += [f"optim.lr={value!r}", "optim.blr=null"]
        elif name == "batch_size":
            out.append(f"optim.batch_size={value}")
        elif name == "dropout":
            out.append(f"{get_tier(tier).dropout_key}={value!r}")
        else:
            out.append(f"model.{name}={value}")
    return out


# ----------------------------------------------------------------------------- one trial
class ReportingTrainer(Trainer):
    """The loop's Trainer plus a per-epoch callback (after the best-epoch bookkeeping, so a
    pruned trial still has its best weights saved)."""

    def __init__(self, *args: Any, on_epoch: OnEpoch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_epoch = on_epoch

    def _track_best(self, epoch: int, score: float) -> None:
        super()._track_best(epoch, score)
        self.on_epoch(epoch, score)


@dataclass
class TrialOutcome:
    run_dir: Path
    best_score: float
    best_epoch: int
    epochs: int
    bundle: Bundle
    metrics: dict


def train_trial(cfg: TrainConfig, on_epoch: OnEpoch, *, progress: bool = False) -> TrialOutcome:
    """training.trainer.run.run() for one process, with the reporting Trainer; the bundle is written
    to run_dir/bundle. Exceptions from `on_epoch` (pruning) propagate after cleanup."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    ensure_synthetic_data(cfg)
    records, summary = load_records(cfg.data)
    cache = build_cache(records, cfg.preprocessing, cfg.data.cache_dir, progress=progress)
    usable = [r for r, ok in zip(records, cache.ok, strict=True) if ok]
    rows = {r.id: i for i, r in enumerate(records)}
    train, val = split_by_patient(usable, cfg.data.val_fraction, cfg.seed)
    summary |= {"train": len(train), "val": len(val), "unreadable": len(cache.errors)}
    info = DistInfo()
    loaders = make_loaders(cfg, cache.folder, [rows[r.id] for r in train],
                           [r.grade for r in train], [rows[r.id] for r in val],
                           [r.grade for r in val], info)
    setup = build_setup(cfg)
    trainer = ReportingTrainer(cfg, setup, loaders, run_dir, info, progress=progress,
                               on_epoch=on_epoch)
    try:
        state = trainer.fit()
        load_best(setup, run_dir)
        logits = trainer.predict_logits(loaders.val)[:, :5]
        calibration, metrics = calibrate_and_evaluate(cfg, logits, loaders.val_grades)
        bundle = write_bundle(cfg, setup, run_dir, calibration, metrics, summary)
        (run_dir / "metrics.json").write_text(json.dumps(bundle.manifest.evaluation, indent=1))
    finally:
        trainer.logger.close()
        for name in ("checkpoint.pt", "best.safetensors"):  # the bundle holds the best weights
            (run_dir / name).unlink(missing_ok=True)
    return TrialOutcome(run_dir, state.best_score, state.best_epoch, len(state.history), bundle,
                        metrics)


# ----------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    study: Any  # optuna.Study
    study_dir: Path
    table: str  # markdown
    best_bundle: Path | None


def run_study(config: str | Path | None, overrides: Sequence[str] = (), *, trials: int = 20,
              study_name: str | None = None, storage: str | None = None,
              search: Sequence[str] | None = None, pruner: Any = None,
              timeout: float | None = None, progress: bool = False) -> StudyResult:
    """Run `trials` more trials (a stored study continues), write the table, keep the best."""
    import optuna

    base = load_config(config, list(overrides))
    ensure_synthetic_data(base)
    load_records(base.data)  # a missing dataset is one clear error, not a failed trial's trace
    tier = base.model.tier
    names = tier_params(tier, search)
    study_name = study_name or f"hpo-{base.run_name}"
    study_dir = Path(base.out_dir) / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *_lora_base_from_pth(base, study_dir)]
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    fixed = [f"out_dir={study_dir}", "bundle_dir=null",
             f"bundle_name={base.bundle_name or study_name}"]

    def objective(trial: Any) -> float:
        params = suggest_params(trial, tier, names)
        run_name = f"trial-{trial.number:03d}"
        cfg = load_config(config, [*overrides, *param_overrides(tier, params), *fixed,
                                   f"run_name={run_name}"])
        trial.set_user_attr("run_dir", str(study_dir / run_name))
        started = time.perf_counter()
        try:
            outcome = train_trial(cfg, _pruning_hook(trial), progress=progress)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        ref = outcome.metrics["referable"]
        trial.set_user_attr("best_epoch", outcome.best_epoch + 1)
        trial.set_user_attr("bundle", str(outcome.bundle.path))
        trial.set_user_attr("referable_sensitivity", ref["sensitivity"])
        trial.set_user_attr("referable_specificity", ref["specificity"])
        return outcome.best_score

    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(FloatingPointError,),
                   callbacks=[lambda s, _t: _keep_only_best_bundle(s)])
    table = results_table(study, names)
    (study_dir / "results.md").write_text(_results_markdown(study, tier, names, table),
                                          encoding="utf-8")
    (study_dir / "results.csv").write_text(results_csv(study, names), encoding="utf-8")
    return StudyResult(study, study_dir, table, _export_best(study, base, study_dir))


def _lora_base_from_pth(cfg: TrainConfig, study_dir: Path) -> list[str]:
    """LoRA over a RETFound .pth: import it once as <study>/retfound-base and train over that."""
    ckpt = cfg.model.checkpoint_path
    if not get_tier(cfg.model.tier).needs_base or not ckpt or not Path(ckpt).is_file():
        return []
    folder = study_dir / "retfound-base"
    if not (folder / "manifest.json").is_file():
        print(f"importing {ckpt} as the LoRA base bundle {folder}", flush=True)
        import_retfound(ckpt, folder, global_pool=cfg.model.global_pool,
                        img_size=cfg.preprocessing.input_size)
    return [f"model.checkpoint_path={json.dumps(str(folder))}"]


def guide_overrides(args: argparse.Namespace) -> list[str]:
    """The guide's HPO flags as --set strings (JSON-quoted, so any path stays a string)."""
    out = []
    for attr, key in (("checkpoint_path", "model.checkpoint_path"), ("data_csv", "data.csv"),
                      ("data_img_dir", "data.images")):
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    if args.wandb:
        out.append("wandb=true")
    return out


def _pruning_hook(trial: Any) -> OnEpoch:
    import optuna

    def on_epoch(epoch: int, score: float) -> None:
        trial.report(score, epoch)
        trial.set_user_attr("epochs", epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (kappa {score:.3f})")

    return on_epoch


def _best_trial(study: Any) -> Any | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _keep_only_best_bundle(study: Any) -> None:
    best = _best_trial(study)
    for t in study.trials:
        bundle = t.user_attrs.get("bundle")
        if bundle and (best is None or t.number != best.number) and Path(bundle).is_dir():
            shutil.rmtree(bundle)


def _export_best(study: Any, base: TrainConfig, study_dir: Path) -> Path | None:
    """Copy the best trial's bundle to bundle_dir (or <study>/best_bundle) and check it loads."""
    best = _best_trial(study)
    if best is None or not Path(best.user_attrs.get("bundle", "")).is_dir():
        return None
    dest = Path(base.bundle_dir) if base.bundle_dir else study_dir / "best_bundle"
    if dest.exists():
        if not (dest / "manifest.json").is_file():
            raise ConfigError(f"{dest} exists and is not a bundle; choose another bundle_dir")
        shutil.rmtree(dest)
    shutil.copytree(best.user_attrs["bundle"], dest)
    load_bundle(dest)
    return dest


# ----------------------------------------------------------------------------- tables
def _rows(study: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        a = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name,
                     "val_qwk": t.value, "best_epoch": a.get("best_epoch"),
                     "epochs": a.get("epochs"),
                     **{n: t.params.get(n) for n in names},
                     "ref_sensitivity": a.get("referable_sensitivity"),
                     "ref_specificity": a.get("referable_specificity"),
                     "seconds": a.get("seconds"), "run_dir": a.get("run_dir")})
    return sorted(rows, key=lambda r: (r["val_qwk"] is None, -(r["val_qwk"] or 0.0), r["trial"]))


def results_table(study: Any, names: Sequence[str]) -> str:
    """Markdown, best first; pruned/failed trials last."""
    rows = _rows(study, names)
    cols = [c for c in (rows[0] if rows else {"trial": 0}) if c != "run_dir"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def results_csv(study: Any, names: Sequence[str]) -> str:
    rows = _rows(study, names)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _results_markdown(study: Any, tier: str, names: Sequence[str], table: str) -> str:
    best = _best_trial(study)
    head = [f"# Hyper-parameter search `{study.study_name}` (tier {tier})", "",
            f"Objective: validation quadratic kappa of the best epoch; searched {list(names)}.",
            "Each trial's resolved config is in its run dir (trial-NNN/config.yaml) and re-runs "
            f"with python -m training.train_{tier} --config trial-NNN/config.yaml.", ""]
    if best is not None:
        head += [f"Best: trial {best.number}, QWK {best.value:.4f}, params {best.params}.", ""]
    return "\n".join(head) + "\n" + table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tuning.hpo",
                                     description="Optuna search over a training config.")
    parser.add_argument("--config", default=str(CONFIG_DIR / "lora.yaml"))
    parser.add_argument("--trials", "--n-trials", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every trial (repeatable)")
    parser.add_argument("--storage", default=None, help="e.g. sqlite:///hpo.db (resumable)")
    parser.add_argument("--study", default=None, help="study name (default hpo-<run_name>)")
    parser.add_argument("--search", default=None,
                        help=f"comma-separated subset of {','.join(ALL_PARAMS)}")
    parser.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--no-progress", action="store_true")
    guide = parser.add_argument_group("the model-architecture guide's flags")
    guide.add_argument("--checkpoint-path", "--checkpoint_path", dest="checkpoint_path",
                       help="RETFound .pth or bundle folder (= --set model.checkpoint_path=...)")
    guide.add_argument("--data-csv", help="labels CSV (= --set data.csv=...)")
    guide.add_argument("--data-img-dir", help="image folder (= --set data.images=...)")
    guide.add_argument("--wandb", action="store_true", help="log to W&B (= --set wandb=true)")
    args = parser.parse_args(argv)
    try:
        result = run_study(args.config, [*guide_overrides(args), *args.set], trials=args.trials,
                           study_name=args.study, storage=args.storage,
                           progress=not args.no_progress,
                           search=args.search.split(",") if args.search else None,
                           timeout=args.timeout)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table)
    print(f"results: {result.study_dir / 'results.md'} and results.csv")
    if result.best_bundle is None:
        print("no trial completed: no bundle kept")
    else:
        print(f"best trial's bundle: {result.best_bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
