"""The one training loop, per tier, on a few synthetic images: it learns, resumes exactly,
runs under torchrun, and writes a bundle that core loads and predicts with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from core.bundle import load_bundle
from core.cache import ModelCache
from core.predict import Predictor
from tests.training.conftest import tiny_overrides
from training.trainer.config import load_config
from training.trainer.run import base_bundle_hint, run

REPO = Path(__file__).resolve().parents[3]
# Enough steps, without augmentation, for a tiny model to fit 36 images: the loss must fall.
LEARN = ("optim.epochs=5", "data.augment=false", "optim.freeze_epochs=0")


def _cfg(tmp_path, synthetic_aptos, tier, *extra):
    overrides = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", tier)
    return load_config(REPO / "training" / "configs" / f"{tier}.yaml",
                       overrides + [f"model.tier={tier}", f"run_name={tier}", *extra])


def _first_image(data_dir: Path) -> Path:
    return sorted((data_dir / "train_images").iterdir())[0]


@pytest.fixture(scope="module")
def retfound_run(tmp_path_factory, synthetic_aptos):
    tmp = tmp_path_factory.mktemp("retfound")
    return run(_cfg(tmp, synthetic_aptos, "retfound", *LEARN), progress=False)


def _loss_fell(history):
    losses = [row["train_loss"] for row in history]
    assert losses[-1] < losses[0], losses


def test_baseline_learns_and_its_bundle_predicts(tmp_path, synthetic_aptos):
    result = run(_cfg(tmp_path, synthetic_aptos, "baseline", *LEARN), progress=False)
    _loss_fell(result.history)
    bundle = load_bundle(result.bundle.path)
    assert bundle.manifest.tier == "baseline" and bundle.manifest.demo
    assert bundle.manifest.evaluation["n"] == result.metrics["n"]
    pred = Predictor(bundle, "cpu", cache=ModelCache()).predict(_first_image(synthetic_aptos))
    assert pred.model == "baseline" and (pred.grade is None or 0 <= pred.grade <= 4)
    for png in ("confusion_matrix.png", "reliability.png", "training_curves.png"):
        assert (result.run_dir / png).stat().st_size > 1000
    assert (result.run_dir / "config.yaml").is_file()


def test_retfound_tier_learns(retfound_run, synthetic_aptos):
    _loss_fell(retfound_run.history)
    bundle = load_bundle(retfound_run.bundle.path)
    assert bundle.manifest.architecture.builder == "retfound_vit"
    Predictor(bundle, "cpu", cache=ModelCache()).predict(_first_image(synthetic_aptos))


def test_lora_tier_learns_over_a_base_bundle(tmp_path, synthetic_aptos, retfound_run):
    base = retfound_run.bundle.path
    cfg = _cfg(tmp_path, synthetic_aptos, "lora", *LEARN,
               f"bundle_dir={base.parent / 'lora-bundle'}", f"model.checkpoint_path={base}")
    result = run(cfg, progress=False)
    _loss_fell(result.history)
    bundle = load_bundle(result.bundle.path)
    assert bundle.manifest.tier == "lora" and bundle.manifest.base_bundle == base.name
    assert (bundle.path / "adapter_model.safetensors").is_file()
    Predictor(bundle, "cpu", cache=ModelCache()).predict(_first_image(synthetic_aptos))
    # written beside its base: nothing to say; anywhere else, the run says how to load it
    assert base_bundle_hint(bundle) is None
    elsewhere = tmp_path / "elsewhere" / "lora"
    shutil.copytree(bundle.path, elsewhere)
    hint = base_bundle_hint(load_bundle(elsewhere))
    assert hint is not None and repr(base.name) in hint and "copy both into models/" in hint


def _cli(tier, overrides, env=None, resume=False, crash_at=None):
    """crash_at: the run SIGKILLs itself at that step (a step hook, tests/training/crash_main)."""
    entry = [f"training.train_{tier}"] if crash_at is None else [
        "tests.training.trainer.crash_main", str(crash_at), tier]
    cmd = [sys.executable, "-m", *entry, "--no-progress"]
    cmd += [arg for o in overrides for arg in ("--set", o)] + (["--resume"] if resume else [])
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=600)


def test_killed_run_resumes_to_identical_weights_and_metrics(tmp_path, synthetic_aptos):
    base = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "baseline")
    base += ["optim.epochs=3", "optim.class_balance=sampler"]
    straight = _cli("baseline", base + ["run_name=straight"])
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = _cli("baseline", base + ["run_name=crashed"], crash_at=6)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL mid-epoch 2
    resumed = _cli("baseline", base + ["run_name=crashed"], resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at epoch 2" in resumed.stdout
    runs = tmp_path / "runs"
    a = load_file(str(runs / "straight" / "bundle" / "weights.safetensors"))
    b = load_file(str(runs / "crashed" / "bundle" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((runs / "straight" / "metrics.json").read_text()) == json.loads(
        (runs / "crashed" / "metrics.json").read_text())
    history = (runs / "crashed" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 4  # header + 3 epochs, no duplicate rows after the resume
    mixed = _cli("baseline", base + ["run_name=crashed", "optim.lr=0.05"], resume=True)
    assert mixed.returncode == 2 and "other settings (optim.lr)" in mixed.stderr, mixed.stderr
    longer = _cli("baseline", base + ["run_name=crashed", "optim.epochs=4"], resume=True)
    assert longer.returncode == 0 and "resumed at epoch 4" in longer.stdout, longer.stderr[-2000:]


def test_torchrun_two_processes_write_one_bundle(tmp_path, synthetic_aptos):
    overrides = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "baseline")
    overrides += ["optim.epochs=1", "run_name=ddp", "optim.freeze_epochs=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "training.train_baseline", "--no-progress"]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundles = list((tmp_path / "runs" / "ddp").glob("bundle/manifest.json"))
    assert len(bundles) == 1
    assert proc.stdout.count("bundle written to") == 1
    Predictor(load_bundle(bundles[0].parent), "cpu", cache=ModelCache()).predict(
        _first_image(synthetic_aptos))


def test_ordinal_run_ships_its_cut_points_and_serves_with_them(tmp_path, synthetic_aptos):
    from core.grading import Thresholds, decide, decide_grade

    result = run(_cfg(tmp_path, synthetic_aptos, "baseline", "optim.epochs=2", "optim.ordinal=true",
                      "optim.freeze_epochs=0"), progress=False)
    cuts = load_bundle(result.bundle.path).manifest.calibration.grade_thresholds
    assert cuts is not None and len(cuts) == 4 and list(cuts) == sorted(cuts)
    assert list(cuts) == result.metrics["ordinal_thresholds"]
    predictor = Predictor(load_bundle(result.bundle.path), "cpu", cache=ModelCache())
    images = sorted((synthetic_aptos / "train_images").iterdir())[:6]
    graded = [p for p in predictor.predict_batch(images) if p.gradable]
    # served through core.grading.decide: the flags at the operating thresholds fix the band,
    # the cut-point grade is kept inside it (issue 12)
    cal = predictor.manifest.calibration
    rule = Thresholds(cal.referable_threshold, cal.vision_threatening_threshold, cuts)
    assert graded and all(p.grade == decide(p.probs, rule).grade for p in graded)
    for p in graded:
        band = [g for g in range(5) if (g >= 2) == p.referable and (g >= 3) == p.vision_threatening]
        assert p.grade == min(max(decide_grade(p.probs, cuts), band[0]), band[-1])


def test_flip_tta_run_calibrates_on_mirrored_logits_and_says_so(tmp_path, synthetic_aptos):
    """Same seed, same weights; only the scoring of the best epoch differs, and the bundle records
    it so the Predictor serves the way the temperature and thresholds were fitted."""
    two = ("optim.epochs=2", "optim.freeze_epochs=0")
    plain = run(_cfg(tmp_path / "a", synthetic_aptos, "baseline", *two), progress=False)
    flip = run(_cfg(tmp_path / "b", synthetic_aptos, "baseline", *two, "flip_tta=true",
                    "onnx=true"), progress=False)  # and its bundle carries its graph
    a, b = load_bundle(plain.bundle.path).manifest, load_bundle(flip.bundle.path).manifest
    assert a.weights.sha256 == b.weights.sha256
    assert (a.calibration.flip_tta, b.calibration.flip_tta) == (False, True)
    assert a.calibration.temperature != b.calibration.temperature
    assert "flip test-time averaging" in (flip.bundle.path / "MODEL_CARD.md").read_text()
    assert "flip test-time averaging" not in (plain.bundle.path / "MODEL_CARD.md").read_text()
    served = Predictor(load_bundle(flip.bundle.path), "cpu", cache=ModelCache())
    assert served.tta is True and served.engine == "onnxruntime"
    assert a.onnx is None and b.onnx.weights_sha256 == b.weights.sha256


def test_early_stop_names_the_epoch_as_the_log_numbers_it(tmp_path, synthetic_aptos, capsys,
                                                          monkeypatch):
    """No epoch beats the first (the score is held constant): patience 1 stops after epoch 2,
    and the note counts epochs as the per-epoch lines do (from 1)."""
    monkeypatch.setattr("training.trainer.loop.selection_score", lambda metrics, name: 0.5)
    cfg = _cfg(tmp_path, synthetic_aptos, "baseline", "optim.epochs=4", "optim.patience=1",
               "optim.freeze_epochs=0")
    result = run(cfg, progress=False)
    out = capsys.readouterr().out
    assert len(result.history) == 2
    assert "epoch 2:" in out and "epoch 3:" not in out
    assert "early stopping after epoch 2:" in out, out[-1500:]


def test_a_checkpoint_from_before_a_new_field_still_resumes():
    """A field added since the checkpoint was written, left at its default, is no change; set
    to another value, it is one (training.trainer.loop.Trainer.load_checkpoint)."""
    from training.trainer.config import TrainConfig
    from training.trainer.loop import config_changes, with_defaults

    now = load_config(None, ["optim.lr=0.01"]).to_dict()
    saved = json.loads(json.dumps(now))
    del saved["optim"]["cpu_bf16"]
    filled = with_defaults(saved, TrainConfig().to_dict())
    assert config_changes(saved, now) == ["optim.cpu_bf16"]  # what a plain comparison says
    assert config_changes(filled, now) == []
    other = load_config(None, ["optim.lr=0.01", "optim.cpu_bf16=false"]).to_dict()
    assert config_changes(filled, other) == ["optim.cpu_bf16"]
