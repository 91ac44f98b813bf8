"""A tiny synthetic APTOS-layout dataset shared by the training tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_aptos(tmp_path_factory) -> Path:
    from core.synthetic import write_aptos_dataset

    folder = tmp_path_factory.mktemp("aptos")
    write_aptos_dataset(folder, 48, seed=3, size=160, workers=1)
    return folder


def tiny_overrides(data_dir: Path, cache_dir: Path, out_dir: Path, tier: str) -> list[str]:
    """Settings that make any tier train in seconds on the CPU."""
    common = [
        "data.preset=aptos", f"data.csv={data_dir / 'train.csv'}", f"data.cache_dir={cache_dir}",
        "data.num_workers=0", "data.val_fraction=0.25", f"out_dir={out_dir}",
        "preprocessing.input_size=64", "optim.batch_size=8", "optim.warmup_epochs=0.5",
        "optim.patience=50", "optim.clip_grad=1.0", "tensorboard=false", "demo=true",
        "onnx=false",  # the graph's export has tests of its own (test_export.py)
    ]
    if tier == "baseline":
        return common + ["model.name=resnet10t", "optim.lr=2e-3", "optim.freeze_epochs=1"]
    vit = "{embed_dim: 64, depth: 2, num_heads: 4, patch_size: 16}"
    if tier == "retfound":
        return common + [f"model.vit={vit}", "optim.lr=1e-3", "optim.layer_decay=0.75",
                         "model.checkpoint_path=null",
                         "model.drop_path_rate=0.0"]
    return common + ["optim.lr=5e-3", "model.lora_r=4", "model.lora_alpha=8",
                     "optim.layer_decay=1.0"]


def save_tiny_baseline_bundle(folder: Path, preprocessing, *, seed: int = 0,
                              version: str = "0.1") -> Path:
    """A resnet10t baseline bundle with seeded random weights, named after its folder (the
    plumbing is under test, not the model)."""
    import torch

    from core.archs.tier import TrainingStart
    from core.archs.tiers import get_tier
    from core.bundle import save_model_bundle
    from core.manifest import Manifest, Provenance, WeightsSpec
    from training.trainer.config import ModelConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = get_tier("baseline").training_model(TrainingStart(ModelConfig(name="resnet10t"),
                                                                  preprocessing.input_size))
    manifest = Manifest(
        name=folder.name, version=version, tier="baseline", created="2026-01-01T00:00:00+00:00",
        architecture=built.architecture, preprocessing=preprocessing,
        explanation=built.explanation, weights=WeightsSpec("weights.safetensors", ""),
        provenance=Provenance("random weights (test)"), demo=True)
    return save_model_bundle(folder, manifest, built.model.eval()).path

