"""LP-FT (`optim.head_init: linear_probe`, training.trainer.head_probe): the head starts as a fitted
logistic regression on the starting features, exactly, for any tier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.errors import ConfigError
from tests.training.conftest import tiny_overrides
from training.trainer.config import load_config
from training.trainer.head_probe import PROBE_C, fit_probe, init_head_from_probe
from training.trainer.run import run

REPO = Path(__file__).resolve().parents[3]


def _sklearn_probs(features, grades, balanced):
    from sklearn.linear_model import LogisticRegression

    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    probe = LogisticRegression(C=PROBE_C, max_iter=3000,
                               class_weight="balanced" if balanced else None).fit(z, grades)
    return probe.predict_proba(z), probe.classes_


@pytest.mark.parametrize("present", [(0, 1, 2, 3, 4), (0, 2)])
def test_the_folded_probe_gives_sklearns_probabilities_on_raw_features(present):
    rng = np.random.default_rng(0)
    grades = np.array([present[i % len(present)] for i in range(120)])
    # a large shared offset and small informative differences, as MAE features have
    features = 5.0 + rng.normal(size=(120, 16)) * 0.1 + 0.05 * grades[:, None]
    weight, bias, _ = fit_probe(features, grades, balanced=True)
    logits = features @ weight.T.astype(np.float64) + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected, classes = _sklearn_probs(features, grades, balanced=True)
    np.testing.assert_allclose(probs[:, classes], expected, atol=1e-4)
    absent = sorted(set(range(5)) - set(present))
    assert (probs[:, absent] < 1e-3).all()


def test_the_head_of_a_model_is_set_to_the_probe():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(8, 12), nn.Tanh())
    model = nn.Sequential()
    model.add_module("features", backbone)
    model.add_module("head", nn.Linear(12, 5))
    x = torch.randn(100, 8)
    y = torch.arange(100) % 5
    x[:, 0] += y * 0.5
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    start = init_head_from_probe(model, loader, torch.device("cpu"), balanced=False)
    assert start.photos == 100 and start.module == "head" and start.train_accuracy > 0.3
    with torch.no_grad():
        ours = torch.softmax(model(x), 1).numpy()
        feats = backbone(x).numpy()
    expected, classes = _sklearn_probs(feats, y.numpy(), balanced=False)
    np.testing.assert_allclose(ours[:, classes], expected, atol=1e-4)


def test_a_model_without_a_grade_head_is_a_config_error():
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.arange(4)), batch_size=2)
    with pytest.raises(ConfigError, match="head_init"):
        init_head_from_probe(nn.Sequential(nn.Linear(3, 5)), loader, torch.device("cpu"), True)


def test_a_run_starts_its_head_from_the_probe_and_its_card_says_so(tmp_path, synthetic_aptos,
                                                                    capsys):
    overrides = tiny_overrides(synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "retfound")
    cfg = load_config(REPO / "training" / "configs" / "retfound.yaml",
                      overrides + ["model.tier=retfound", "run_name=lpft", "optim.epochs=1",
                                   "data.limit=32", "optim.head_init=linear_probe"])
    result = run(cfg, progress=False)
    assert "head head initialised from a linear probe" in capsys.readouterr().out
    card = (result.bundle.path / "MODEL_CARD.md").read_text()
    assert "the head started as a linear probe" in card and "(LP-FT)" in card
