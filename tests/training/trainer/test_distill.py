"""Knowledge distillation from a teacher bundle (training.trainer.distill, `optim.distill_*`): the loss,
the teacher's view of the student's batch, a tiny distilled run, and early, clear errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.bundle import load_bundle
from core.errors import ConfigError
from core.preprocessing import PreprocessSpec, preprocess
from tests.training.conftest import save_tiny_baseline_bundle, tiny_overrides
from training.trainer.config import load_config
from training.trainer.distill import Teacher, distill_loss
from training.trainer.finalize import model_card
from training.trainer.run import main, run

REPO = Path(__file__).resolve().parents[3]


def _cfg(tmp: Path, data: Path, tier: str, *extra: str):
    overrides = tiny_overrides(data, tmp / "cache", tmp / "runs", tier)
    return load_config(REPO / "training" / "configs" / f"{tier}.yaml",
                       overrides + [f"model.tier={tier}", f"run_name={tier}", *extra])


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory) -> Path:
    """A tiny baseline grader bundle (resnet10t, untrained: the plumbing is under test, not the
    teacher), fed at another input size and mean/std than the students' (64 px, ImageNet)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-teacher"
    return save_tiny_baseline_bundle(folder, PreprocessSpec(
        input_size=48, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)), version="0.3")


# ------------------------------------------------------------------------------------- loss
def test_distill_loss_is_the_hand_computed_mix():
    student = torch.tensor([[1.0, 0.0, -1.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0, -2.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    hard = torch.tensor(0.8)
    alpha, t = 0.7, 2.0

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = np.mean([sum(p * math.log(p / q) for p, q in zip(softmax(tv / t), softmax(sv / t),
                                                           strict=True))
                  for sv, tv in zip(student.numpy(), teacher.numpy(), strict=True)])
    expected = alpha * t * t * kl + (1 - alpha) * 0.8
    got = distill_loss(student, teacher, hard, alpha, t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert distill_loss(student, teacher, hard, 0.0, t).item() == pytest.approx(0.8, abs=1e-7)
    assert distill_loss(teacher, teacher, hard, 1.0, t).item() == pytest.approx(0.0, abs=1e-6)
    # the soft term pulls the student only: no gradient reaches the teacher's logits
    s, tch = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    distill_loss(s, tch, hard, alpha, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and tch.grad is None


# ----------------------------------------------------------------------------- the adapter
@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from core.synthetic import generate_fundus

    return generate_fundus(2, seed=1, size=256).image


def _pixels(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.std, spec.mean))
    return x * std + mean


def test_teacher_sees_the_students_batch_in_its_own_preprocessing(photo):
    student = PreprocessSpec(input_size=64)
    x = preprocess(photo, student).tensor[None]
    # same size, other mean/std: the pixel values map exactly
    other = PreprocessSpec(input_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    adapted = Teacher(nn.Identity(), other, student, None).adapt(x)
    assert torch.allclose(adapted, preprocess(photo, other).tensor[None], atol=1e-5)
    # the same spec: the batch itself
    assert Teacher(nn.Identity(), student, student, None).adapt(x) is x
    # another size too: what preprocessing at the teacher's size gives, within resampling error
    for size, interp in ((48, "bicubic"), (48, "bilinear"), (32, "area")):
        teacher = PreprocessSpec(input_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25),
                                 interpolation=interp)
        adapted = Teacher(nn.Identity(), teacher, student, None).adapt(x)
        direct = preprocess(photo, teacher).tensor[None]
        assert adapted.shape == direct.shape == (1, 3, size, size)
        error = (_pixels(adapted, teacher) - _pixels(direct, teacher)).abs()
        assert error.mean() < 0.01 and error.max() < 0.1, (size, interp, error.mean(), error.max())


# ------------------------------------------------------------------------------ end to end
def test_a_distilled_retfound_run_writes_a_bundle_that_names_its_teacher(
        tmp_path, synthetic_aptos, teacher_bundle, capsys, monkeypatch):
    seen = []  # the shapes the teacher was fed: its own 48 px, once per training batch
    adapt = Teacher.adapt

    def spy(self, x):
        out = adapt(self, x)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(Teacher, "adapt", spy)
    cfg = _cfg(tmp_path, synthetic_aptos, "retfound", "optim.epochs=1", "data.limit=32",
               f"optim.distill_from={teacher_bundle}", "optim.distill_alpha=0.5",
               "optim.distill_temperature=3")
    result = run(cfg, progress=False)
    assert "distilling from tiny-teacher@0.3" in capsys.readouterr().out
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    assert seen and all(shape[1:] == (3, 48, 48) for shape in seen), seen
    bundle = load_bundle(result.bundle.path)
    assert bundle.manifest.tier == "retfound"
    card = (bundle.path / "MODEL_CARD.md").read_text()
    assert f"Distilled from teacher tiny-teacher@0.3 ({teacher_bundle}; alpha 0.5, T 3.0)" in card
    assert "soft targets distilled from tiny-teacher@0.3" in bundle.manifest.provenance.training_data
    saved = (result.run_dir / "config.yaml").read_text()
    assert f"distill_from: {teacher_bundle}" in saved
    # a card without a teacher says so
    plain = model_card(bundle.manifest, bundle.manifest.evaluation, {})
    assert "Knowledge distillation: none" in plain and "Distilled from" not in plain




class _Crash(Exception):
    pass


def test_a_distilled_run_resumes_to_identical_weights(tmp_path, synthetic_aptos, teacher_bundle,
                                                      capsys):
    """The teacher holds no state: a run stopped mid-epoch and resumed ends where a straight
    run ends."""
    from safetensors.torch import load_file

    extra = ("optim.epochs=2", "data.limit=24", f"optim.distill_from={teacher_bundle}")
    straight = run(_cfg(tmp_path, synthetic_aptos, "retfound", *extra, "run_name=straight"),
                   progress=False)
    cfg = _cfg(tmp_path, synthetic_aptos, "retfound", *extra, "run_name=crashed")
    checkpoint = tmp_path / "runs" / "crashed" / "checkpoint.pt"

    def crash(step):  # the first batch of epoch 2, after epoch 1's checkpoint
        if checkpoint.is_file():
            raise _Crash

    with pytest.raises(_Crash):
        run(cfg, progress=False, step_hooks=[crash])
    capsys.readouterr()
    resumed = run(cfg, resume=True, progress=False)
    assert "resumed at epoch 2" in capsys.readouterr().out
    a, b = (load_file(str(r.bundle.path / "weights.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


# ---------------------------------------------------------------------------------- errors
def test_a_bad_teacher_stops_the_run_before_anything_is_written(tmp_path, synthetic_aptos,
                                                                teacher_bundle):
    missing = _cfg(tmp_path, synthetic_aptos, "retfound", f"optim.distill_from={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="optim.distill_from: .*nope is not a folder"):
        run(missing, progress=False)
    encoder = tmp_path / "encoder"
    shutil.copytree(teacher_bundle, encoder)
    manifest = json.loads((encoder / "manifest.json").read_text())
    (encoder / "manifest.json").write_text(json.dumps(manifest | {"outputs": ["features"]}))
    with pytest.raises(ConfigError, match="outputs \\['features'\\], not ICDR grades"):
        run(_cfg(tmp_path, synthetic_aptos, "retfound", f"optim.distill_from={encoder}"),
            progress=False)
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    with pytest.raises(ConfigError, match="no manifest.json"):
        run(_cfg(tmp_path, synthetic_aptos, "retfound", f"optim.distill_from={not_a_bundle}"),
            progress=False)
    graham = _cfg(tmp_path, synthetic_aptos, "retfound", f"optim.distill_from={teacher_bundle}",
                  "preprocessing.ben_graham=true")
    with pytest.raises(ConfigError, match="preprocessing.ben_graham"):
        run(graham, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_the_cli_reports_a_bad_teacher_as_an_error(tmp_path, synthetic_aptos, capsys):
    overrides = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "retfound")
    argv = [arg for o in overrides + [f"optim.distill_from={tmp_path / 'nope'}"]
            for arg in ("--set", o)]
    assert main("retfound", argv + ["--no-progress"]) == 2
    assert "error: optim.distill_from:" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("optim.distill_alpha=1.5", "optim.distill_alpha': must lie in \\[0, 1\\]"),
    ("optim.distill_alpha=-0.1", "optim.distill_alpha"),
    ("optim.distill_temperature=0", "optim.distill_temperature': must be finite and > 0"),
    ("optim.distill_from=''", "optim.distill_from': empty"),
])
def test_distillation_settings_are_checked_with_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
