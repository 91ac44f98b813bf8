"""Optuna search on the tiny synthetic set: per-tier search space, per-epoch reports reach the
pruner, results table + CSV, only the best trial's bundle kept, stored studies continue."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from core.bundle import load_bundle
from core.cache import ModelCache
from core.errors import ConfigError
from core.predict import Predictor
from tests.helpers import TINY_VIT, make_tiny_bundle
from tests.training.conftest import tiny_overrides
from training.trainer.config import load_config
from training.tuning.hpo import (
    BATCH_SIZES,
    LORA_ALPHA,
    LORA_R,
    main,
    param_overrides,
    run_study,
    tier_params,
)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "training" / "configs"


def _overrides(tmp_path, data, tier, *extra):
    return [*tiny_overrides(data, tmp_path / "cache", tmp_path / "runs", tier),
            f"model.tier={tier}", *extra]


def _image(data: Path) -> Path:
    return sorted((data / "train_images").iterdir())[0]


def test_search_space_depends_on_the_tier():
    assert tier_params("baseline") == ("lr", "batch_size", "dropout")
    assert tier_params("retfound") == ("lr", "batch_size", "dropout")
    assert tier_params("lora") == ("lr", "batch_size", "dropout", "lora_r", "lora_alpha")
    assert tier_params("baseline", ["lr", "lora_r"]) == ("lr",)
    with pytest.raises(ConfigError, match="unknown"):
        tier_params("lora", ["learning_rate"])


def test_trial_parameters_land_on_the_right_config_keys():
    params = {"lr": 2e-4, "batch_size": 16, "dropout": 0.25}
    base = load_config(CONFIGS / "baseline.yaml", param_overrides("baseline", params))
    assert (base.optim.lr, base.optim.batch_size, base.model.dropout_rate) == (2e-4, 16, 0.25)
    ret = load_config(CONFIGS / "retfound.yaml", param_overrides("retfound", params))
    assert ret.optim.blr is None and ret.optim.lr == 2e-4 and ret.model.drop_path_rate == 0.25
    lora = load_config(CONFIGS / "lora.yaml",
                       param_overrides("lora", params | {"lora_r": 16, "lora_alpha": 64}))
    assert (lora.model.head_dropout, lora.model.lora_r, lora.model.lora_alpha) == (0.25, 16, 64)


def test_study_reports_every_epoch_writes_the_table_and_keeps_the_best(tmp_path,
                                                                       synthetic_aptos, capsys):
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    argv = ["--config", str(CONFIGS / "baseline.yaml"), "--storage", storage, "--study", "s",
            "--no-progress"]
    for o in _overrides(tmp_path, synthetic_aptos, "baseline", "optim.epochs=2"):
        argv += ["--set", o]
    assert main([*argv, "--trials", "1"]) == 0
    assert main([*argv, "--trials", "1"]) == 0  # the stored study continues
    assert "best trial's bundle" in capsys.readouterr().out
    study = optuna.load_study(study_name="s", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 2 and done
    for t in done:  # the Trainer hook reported both epochs to the pruner
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.value == max(t.intermediate_values.values())
        assert t.params["batch_size"] in BATCH_SIZES and 1e-5 <= t.params["lr"] <= 3e-3
    study_dir = tmp_path / "runs" / "s"
    with (study_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["trial"]) for r in rows][0] == study.best_trial.number
    assert float(rows[0]["val_qwk"]) == pytest.approx(study.best_value)
    assert "| trial | state | val_qwk |" in (study_dir / "results.md").read_text()
    kept = sorted(p.parent.parent.name for p in study_dir.glob("trial-*/bundle/manifest.json"))
    assert kept == [f"trial-{study.best_trial.number:03d}"]
    assert not list(study_dir.glob("trial-*/checkpoint.pt"))
    best = load_bundle(study_dir / "best_bundle")
    assert best.name == "s" and best.manifest.evaluation["n"] > 0
    Predictor(best, "cpu", cache=ModelCache()).predict(_image(synthetic_aptos))


def test_pruned_trial_stops_after_its_first_epoch(tmp_path, synthetic_aptos):
    # kappa never exceeds 1, so this pruner prunes at the first reported epoch
    result = run_study(CONFIGS / "baseline.yaml",
                       _overrides(tmp_path, synthetic_aptos, "baseline", "optim.epochs=3"),
                       trials=1, study_name="p", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = result.study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0] and trial.user_attrs["epochs"] == 1
    assert result.best_bundle is None and "PRUNED" in result.table
    run_dir = Path(trial.user_attrs["run_dir"])
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 2
    assert not (run_dir / "bundle").exists() and not (run_dir / "checkpoint.pt").exists()


def test_lora_study_searches_adapter_settings(tmp_path, synthetic_aptos):
    base = make_tiny_bundle(tmp_path / "models", "base", TINY_VIT)
    overrides = _overrides(tmp_path, synthetic_aptos, "lora", "optim.epochs=1",
                           f"model.checkpoint_path={base.path}",
                           f"bundle_dir={tmp_path / 'models' / 'lora-best'}")
    result = run_study(CONFIGS / "lora.yaml", overrides, trials=1, study_name="l")
    params = result.study.trials[0].params
    assert params["lora_r"] in LORA_R and params["lora_alpha"] in LORA_ALPHA
    assert 0.0 <= params["dropout"] <= 0.5 and 1e-5 <= params["lr"] <= 1e-3
    cfg = load_config(result.study_dir / "trial-000" / "config.yaml")
    assert (cfg.model.lora_r, cfg.model.lora_alpha) == (params["lora_r"], params["lora_alpha"])
    assert cfg.model.head_dropout == pytest.approx(params["dropout"])
    bundle = load_bundle(result.best_bundle)
    assert bundle.manifest.tier == "lora" and bundle.manifest.base_bundle == "base"
    Predictor(bundle, "cpu", cache=ModelCache()).predict(_image(synthetic_aptos))


def test_a_missing_dataset_is_one_clear_error_before_any_trial(tmp_path, capsys):
    # the README's hpo command on a machine without data/aptos2019 printed a failed trial's
    # traceback (optuna's log) before the one-line error
    runs = tmp_path / "runs"
    assert main(["--config", str(CONFIGS / "lora.yaml"), "--trials", "1",
                 "--set", f"data.csv={tmp_path / 'none.csv'}", "--set", f"out_dir={runs}"]) == 2
    err = capsys.readouterr().err
    assert "Labels file not found" in err and "Traceback" not in err and "Trial 0" not in err
    assert not runs.exists()  # no study folder for a study that cannot run
