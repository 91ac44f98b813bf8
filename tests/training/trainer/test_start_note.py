"""Every card says where its weights started (training.trainer.finalize.start_note), so a reader can
tell a tier fine-tuned from the MAE encoder from one trained from scratch."""

from __future__ import annotations

import json

from training.trainer.config import ModelConfig, TrainConfig
from training.trainer.finalize import model_card, start_note


def _cfg(**model) -> TrainConfig:
    return TrainConfig(model=ModelConfig(**model))


def test_a_bundle_start_is_named_with_how_that_bundle_was_made(tmp_path):
    encoder = tmp_path / "mae-demo-encoder"
    encoder.mkdir()
    made = "MAE pretraining by this project (60 epochs) on unlabelled photos: synthetic:2000"
    (encoder / "manifest.json").write_text(json.dumps({"provenance": {"training_data": made}}))
    note = start_note(_cfg(tier="retfound", checkpoint_path=str(encoder)))
    assert note.startswith("bundle `mae-demo-encoder`") and note.endswith(made)


def test_other_starts_are_named_plainly(tmp_path):
    assert start_note(_cfg(tier="retfound", checkpoint_path=str(tmp_path / "RETFound_cfp.pth"))) \
        == "checkpoint `RETFound_cfp.pth`"
    assert "ImageNet weights of `tf_efficientnet_lite0`" in start_note(
        _cfg(name="tf_efficientnet_lite0", pretrained=True))
    assert start_note(_cfg(name="resnet10t")).startswith("random initialisation")


def test_the_card_carries_the_start_line(tmp_path):
    from core.bundle import load_bundle

    manifest = load_bundle("models/demo-baseline").manifest
    card = model_card(manifest, manifest.evaluation, {}, started_from="random initialisation")
    assert "- Started from random initialisation" in card
    assert "Started from" not in model_card(manifest, manifest.evaluation, {})
