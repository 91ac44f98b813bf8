"""`optim.head_lr_scale`: the new classifier head learns at its own multiple of the base lr,
while the ViT's layer-wise decay is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import tiny_overrides
from training.trainer.config import load_config
from training.trainer.tiers import build_setup

REPO = Path(__file__).resolve().parents[3]


def _scales(tier: str, tmp_path: Path, head_lr_scale: float) -> dict[str, float]:
    extra = [f"model.tier={tier}"]
    if tier == "lora":  # over the shipped MAE encoder bundle (LoRA needs a base)
        extra.append(f"model.checkpoint_path={REPO / 'models' / 'mae-demo-encoder'}")
    cfg = load_config(REPO / "training" / "configs" / f"{tier}.yaml",
                      tiny_overrides(tmp_path, tmp_path, tmp_path, tier) + extra)
    setup = build_setup(cfg)
    names = {id(p): n for n, p in setup.model.named_parameters()}
    groups = setup.param_groups(1.0, 0.05, cfg.optim.layer_decay, head_lr_scale=head_lr_scale)
    return {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("tier", ["baseline", "retfound", "lora"])
def test_only_the_head_moves_with_head_lr_scale(tier, tmp_path):
    plain = _scales(tier, tmp_path, 1.0)
    scaled = _scales(tier, tmp_path, 10.0)
    assert plain.keys() == scaled.keys()
    head = {n for n in plain if {"head", "classifier"} & set(n.split(".")[:-1])}
    assert head, sorted(plain)[-5:]
    for name, scale in plain.items():
        assert scaled[name] == pytest.approx(scale * 10 if name in head else scale), name


def test_layer_decay_still_shrinks_lower_vit_blocks(tmp_path):
    scales = _scales("retfound", tmp_path, 10.0)
    first = scales["blocks.0.attn.qkv.weight"]
    last = scales["blocks.1.attn.qkv.weight"]
    assert first == pytest.approx(0.75 ** 2) and last == pytest.approx(0.75)
    assert scales["head.weight"] == pytest.approx(10.0)
