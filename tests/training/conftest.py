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
