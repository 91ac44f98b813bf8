"""A fourth tier, added in this file and nowhere else.

A tiny "dinov2-like" ViT (register tokens, LayerScale, CLS pooling, timm's VisionTransformer)
registered by name: it trains for one step with the project's training run, becomes a bundle,
is loaded by the Predictor, explained, cached and exported to ONNX. No other file names it:
the manifest parser, bundle loading, the cache, the predictor, training and export all ask the
tier registry (core.archs.tiers).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from torch import nn

from core.archs.specs import ArchitectureSpec, ExplanationSpec
from core.archs.tier import Tier, TrainableModel, TrainingStart
from core.archs.tiers import register_tier, unregister_tier
from core.bundle import load_bundle
from core.cache import ModelCache
from core.predict import Predictor
from tests.helpers import fundus_like
from training.interchange.export import export_onnx
from training.trainer.config import load_config
from training.trainer.run import run

NAME = "dinov2-like"
VIT = {"patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "reg_tokens": 2}


def dino_like_vit(**kwargs: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(num_classes=5, global_pool="token", no_embed_class=True,
                             init_values=1e-5, **kwargs)


class DinoLikeTier(Tier):
    name = NAME
    label = "DINOv2-like ViT (test)"
    lr_range = (1e-5, 1e-3)

    def new_module(self, architecture: ArchitectureSpec) -> nn.Module:
        return dino_like_vit(**architecture.kwargs)

    def training_model(self, start: TrainingStart) -> TrainableModel:
        kwargs = {"img_size": start.input_size, **start.model.vit}
        vit = dino_like_vit(**kwargs)
        return TrainableModel(vit, ArchitectureSpec("dinov2_like", kwargs),
                              ExplanationSpec(f"blocks.{len(vit.blocks) - 1}.norm1", arch="vit"))


@pytest.fixture
def dino_tier():
    tier = register_tier(DinoLikeTier())
    yield tier
    unregister_tier(NAME)


def test_a_tier_added_in_one_file_trains_serves_explains_caches_and_exports(
        dino_tier, tmp_path, synthetic_aptos):
    cfg = load_config(None, [
        f"model.tier={NAME}", f"model.vit={json.dumps(VIT)}", "run_name=dino", "demo=true",
        "data.preset=aptos", f"data.csv={synthetic_aptos / 'train.csv'}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "data.val_fraction=0.25",
        "data.augment=false", f"out_dir={tmp_path / 'runs'}", "preprocessing.input_size=64",
        "optim.epochs=1", "optim.batch_size=64", "optim.warmup_epochs=0", "optim.lr=1e-3",
        "optim.layer_decay=0.75", "tensorboard=false"])
    steps: list[int] = []
    result = run(cfg, progress=False, step_hooks=[steps.append])
    assert steps == [1] and len(result.history) == 1  # one optimiser step: 36 images, batch 64

    bundle = load_bundle(result.bundle.path)
    assert bundle.manifest.tier == NAME and bundle.manifest.architecture.builder == "dinov2_like"

    cache = ModelCache()
    predictor = Predictor(bundle, "cpu", cache=cache)
    photo = fundus_like(1, 192)
    pred = predictor.predict(photo)
    assert pred.gradable and 0 <= pred.grade <= 4 and abs(sum(pred.probs) - 1) < 1e-5

    heatmap = predictor.explain(predictor.prepare(photo)).heatmap
    assert heatmap.shape == (64, 64) and np.isfinite(heatmap).all()

    assert cache.get(bundle, "cpu").module is predictor.loaded.module  # cached, loaded once
    assert len(cache.loaded_modules()) == 1

    exported = export_onnx(bundle, tmp_path / "dino.onnx", opset=17)
    assert exported.check.ok
    sidecar = json.loads(exported.sidecar_path.read_text())
    assert sidecar["model"]["tier"] == NAME and not sidecar["model"]["lora_merged"]
