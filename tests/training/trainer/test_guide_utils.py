"""training.trainer.utils: the guide's seven utilities, checked against the project code they wrap."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from core.archs.baseline import DRClassifier
from core.errors import CheckpointError
from training.common.metrics import cohen_kappa, confusion_matrix, evaluate
from training.trainer.config import Config
from training.trainer.utils import (
    calculate_metrics,
    count_parameters,
    create_data_loaders,
    load_checkpoint,
    plot_confusion_matrix,
    save_checkpoint,
    set_seed,
)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_set_seed_repeats_python_numpy_and_torch():
    set_seed(42)
    first = _draws()
    set_seed(42)
    second = _draws()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_count_parameters_total_and_trainable():
    model = DRClassifier("resnet10t", pretrained=False)
    model.freeze_backbone()
    total, trainable = count_parameters(model)
    assert (total, trainable) == model.get_num_params()
    assert count_parameters(model, trainable_only=True) == model.num_features * 5 + 5


def _stepped() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip(tmp_path):
    model, optimizer = _stepped()
    path = save_checkpoint(model, optimizer, 3, tmp_path / "ckpt" / "epoch_3.pth",
                           metrics={"kappa_quadratic": 0.8}, note="x")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    meta = load_checkpoint(path, fresh, fresh_opt)
    assert meta == {"epoch": 3, "metrics": {"kappa_quadratic": 0.8}, "note": "x"}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 fresh.state_dict().values(), strict=True))
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_load_checkpoint_reads_a_trainer_checkpoint_and_refuses_code(tmp_path):
    model, optimizer = _stepped()
    trainer_layout = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scaler": {}, "loop": {"epoch": 2}, "torch_rng": torch.get_rng_state(),
                      "config": {"seed": 0}}  # what training.trainer.loop.Trainer.save_checkpoint writes
    torch.save(trainer_layout, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt", model)["loop"] == {"epoch": 2}
    torch.save({"model": model.state_dict(), "evil": random.Random()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "bad.pt", model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", model)


def test_calculate_metrics_is_the_trainers_evaluate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 40)
    probs = rng.dirichlet(np.ones(5), 40)
    assert calculate_metrics(y, probs) == evaluate(y, probs)
    pred = rng.integers(0, 5, 40)  # predicted grades: what grades alone define
    grades = calculate_metrics(y, pred)
    assert grades["accuracy"] == pytest.approx(float((pred == y).mean()))
    assert grades["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert grades["kappa_quadratic"] == pytest.approx(cohen_kappa(y, pred, quadratic=True))
    assert grades["kappa"] == pytest.approx(cohen_kappa(y, pred))
    assert "macro_auroc" not in grades and "referable" not in grades


def test_plot_confusion_matrix_writes_a_png(tmp_path):
    out = plot_confusion_matrix([0, 1, 2, 3, 4, 2], [0, 1, 1, 3, 4, 2], tmp_path / "cm.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_create_data_loaders_from_a_guide_config(tmp_path, synthetic_aptos):
    config = Config.from_dict({
        "model": {"name": "resnet10t", "pretrained": False, "dropout": 0.3},
        "training": {"batch_size": 8},
        "data": {"preset": "aptos", "csv": str(synthetic_aptos / "train.csv"),
                 "cache_dir": str(tmp_path / "cache"), "num_workers": 0, "val_fraction": 0.25},
        "preprocessing": {"input_size": 64},
    })
    train, val = create_data_loaders(config)
    images, grades = next(iter(train))
    assert images.shape == (8, 3, 64, 64) and grades.dtype == torch.long
    assert len(train.dataset) + len(val.dataset) <= 48 and len(val.dataset) > 0
