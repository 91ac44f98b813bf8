"""DRClassifier: the seed API, offline behaviour, and freezing."""

from __future__ import annotations

import pytest
import torch

from core.archs.baseline import DRClassifier
from core.errors import ConfigError, WeightsUnavailableError


def test_forward_shape_and_head():
    model = DRClassifier("resnet10t", num_classes=5, pretrained=False, dropout_rate=0.3).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert model.classifier.in_features == model.num_features


def test_freeze_and_unfreeze_change_trainable_count():
    model = DRClassifier("resnet10t", pretrained=False)
    total, trainable = model.get_num_params()
    assert total == trainable
    model.freeze_backbone()
    head = model.num_features * 5 + 5
    assert model.get_num_params() == (total, head)
    model.unfreeze_backbone()
    assert model.get_num_params() == (total, total)
    assert f"{total:,} parameters" in model.summary()


def test_pretrained_without_weights_file_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="weights_path"):
        DRClassifier("resnet10t", pretrained=True)


def test_pretrained_from_local_file(tmp_path):
    """The offline path: a local timm weights file is really loaded (not random)."""
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file(src.state_dict(), str(path))
    model = DRClassifier("resnet10t", pretrained=True, weights_path=str(path))
    own = model.backbone.state_dict()
    assert torch.equal(own["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    with pytest.raises(WeightsUnavailableError, match="not found"):
        DRClassifier("resnet10t", pretrained=True, weights_path=str(tmp_path / "nope.pth"))


def test_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError, match="resnet50"):
        DRClassifier("resnt50", pretrained=False)


def test_from_config_rejects_unknown_keys():
    model = DRClassifier.from_config({"model_name": "resnet10t", "pretrained": False,
                                      "num_classes": 3})
    assert model.classifier.out_features == 3
    with pytest.raises(ConfigError, match="dropout_prob"):
        DRClassifier.from_config({"model_name": "resnet10t", "dropout_prob": 0.1})
