"""The CPU training fast path (optim.cpu_fast): channels_last and bf16 autocast for the training
steps only; every split the bundle is calibrated and measured on is scored in fp32, as served."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_overrides
from training.trainer import loop
from training.trainer.config import load_config
from training.trainer.run import run

REPO = Path(__file__).resolve().parents[3]


def _cfg(tmp_path, data, *extra):
    overrides = tiny_overrides(data, tmp_path / "cache", tmp_path / "runs", "baseline")
    return load_config(REPO / "training" / "configs" / "baseline.yaml",
                       overrides + ["run_name=fast", "optim.epochs=2", "device=cpu", *extra])


def _record_dtypes(monkeypatch) -> list[tuple[str, torch.dtype, bool]]:
    """(phase, dtype of the first layer's output, input channels_last) per forward pass."""
    seen: list[tuple[str, torch.dtype, bool]] = []
    original = loop.Trainer._to_device

    def spy(self, x):
        x = original(self, x)
        phase = "train" if self.setup.model.training else "score"
        seen.append((phase, x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return x

    monkeypatch.setattr(loop.Trainer, "_to_device", spy)
    return seen


@pytest.mark.skipif(not loop.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_fast_path_trains_in_bf16_and_scores_in_fp32(tmp_path, synthetic_aptos, monkeypatch):
    autocast_dtypes: list[torch.dtype | None] = []
    original_autocast = torch.autocast

    def spy_autocast(device_type, dtype=None, enabled=True, **kw):
        autocast_dtypes.append(dtype if enabled else None)
        return original_autocast(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(loop.torch, "autocast", spy_autocast)
    seen = _record_dtypes(monkeypatch)
    result = run(_cfg(tmp_path, synthetic_aptos, "optim.cpu_fast=true"), progress=False)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    assert {cl for _, _, cl in seen} == {True}, "inputs were not channels_last"
    assert torch.bfloat16 in autocast_dtypes, "no training step ran under bf16 autocast"
    # training autocasts are bf16, scoring ones disabled: count them apart by phase
    phases = [p for p, _, _ in seen]
    assert autocast_dtypes.count(torch.bfloat16) == phases.count("train")
    assert autocast_dtypes.count(None) == phases.count("score") > 0


@pytest.mark.parametrize("flags, expected", [((), (None, False)),
                                             (("optim.cpu_fast=true", "optim.cpu_bf16=false"),
                                              (None, True))])
def test_fp32_without_the_flag_or_bf16(tmp_path, synthetic_aptos, monkeypatch, flags, expected):
    """No flag: fp32 NCHW as before; cpu_bf16 false: channels_last in fp32 (the reference the
    fast path's accuracy is paired against)."""
    seen = _record_dtypes(monkeypatch)
    trainer_amp: list = []
    original_init = loop.Trainer.__init__

    def spy_init(self, *a, **kw):
        original_init(self, *a, **kw)
        trainer_amp.append((self.amp_dtype, self.channels_last))

    monkeypatch.setattr(loop.Trainer, "__init__", spy_init)
    run(_cfg(tmp_path, synthetic_aptos, *flags), progress=False)
    assert trainer_amp == [expected]
    assert {cl for _, _, cl in seen} == {expected[1]}
