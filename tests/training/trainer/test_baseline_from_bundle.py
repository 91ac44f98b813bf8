"""A baseline run with `model.checkpoint_path` = a baseline bundle starts from that bundle's
weights (a clinic fine-tuning a shipped grader on its own photos). Before, the baseline tier
ignored the path: it trained from scratch while the card said "started from bundle X"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.archs.tier import TrainingStart
from core.archs.tiers import get_tier
from core.bundle import load_bundle, read_weights
from core.errors import ConfigError
from core.preprocessing import PreprocessSpec
from tests.training.conftest import save_tiny_baseline_bundle, tiny_overrides
from training.trainer.config import ModelConfig, load_config
from training.trainer.run import run
from training.trainer.tiers import training_start

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory) -> Path:
    """A tiny resnet10t baseline bundle with seeded random weights."""
    folder = tmp_path_factory.mktemp("models") / "tiny-base"
    return save_tiny_baseline_bundle(folder, PreprocessSpec(input_size=64), seed=7)


def _start(bundle: Path, name: str = "resnet10t") -> TrainingStart:
    from training.trainer.config import TrainConfig

    return training_start(TrainConfig(model=ModelConfig(name=name,
                                                        checkpoint_path=str(bundle))))


def test_every_tensor_comes_from_the_bundle(base_bundle):
    built = get_tier("baseline").training_model(_start(base_bundle))
    expected = read_weights(load_bundle(base_bundle))
    state = built.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    fresh = get_tier("baseline").training_model(TrainingStart(ModelConfig(name="resnet10t"), 64))
    assert not all(torch.equal(fresh.model.state_dict()[k], expected[k]) for k in expected)


def test_another_timm_model_is_refused_by_name(base_bundle):
    with pytest.raises(ConfigError, match="same timm model .'resnet18'.*'resnet10t'"):
        get_tier("baseline").training_model(_start(base_bundle, "resnet18"))


def test_a_run_from_the_bundle_trains_and_says_where_it_started(tmp_path, base_bundle,
                                                                synthetic_aptos):
    cfg = load_config(REPO / "training" / "configs" / "baseline.yaml", tiny_overrides(
        synthetic_aptos, tmp_path / "cache", tmp_path / "runs", "baseline") + [
        "optim.epochs=1", "optim.freeze_epochs=0", "run_name=from-bundle",
        f"model.checkpoint_path={base_bundle}"])
    result = run(cfg, progress=False)
    card = (result.bundle.path / "MODEL_CARD.md").read_text()
    assert "- Started from bundle `tiny-base`" in card
    trained = read_weights(load_bundle(result.bundle.path))
    start = read_weights(load_bundle(base_bundle))
    assert set(trained) == set(start)
    assert not all(torch.equal(trained[k], start[k]) for k in start)  # it did train
