"""CPU int8 grading for ViT tiers: close to fp32, fp32 left untouched, explanations in fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.cache import ModelCache, module_nbytes
from core.predict import Predictor
from core.quantize import int8_copy, int8_nbytes, int8_targets, is_quantized
from tests.helpers import TINY_VIT, fundus_like, make_lora_bundles, make_tiny_bundle


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("q"), "tiny-vit", arch=TINY_VIT, seed=3)


def test_int8_copy_quantizes_blocks_not_head_and_leaves_the_original() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    model.head = nn.Linear(16, 5)
    copy = int8_copy(model)
    assert is_quantized(copy) and not is_quantized(model)
    assert type(copy.head) is nn.Linear and type(copy[0]) is not nn.Linear
    assert int8_targets(model) == ["0"]
    assert int8_nbytes(model) < module_nbytes(model)
    x = torch.randn(4, 8)
    assert torch.allclose(copy(x), model(x), atol=0.05)  # the Sequential runs the head last


def test_int8_predictor_agrees_with_fp32_and_says_so(vit_bundle) -> None:
    cache = ModelCache()
    fp32 = Predictor(vit_bundle, "cpu", cache=cache, cpu_int8=False)
    int8 = Predictor(vit_bundle, "cpu", cache=cache, cpu_int8=True)
    assert int8.int8 and not fp32.int8
    assert int8.grader.module is not fp32.loaded.module and is_quantized(int8.grader.module)
    assert int8.loaded.module is fp32.loaded.module and not is_quantized(fp32.loaded.module)
    items = [fundus_like(seed) for seed in range(6)]
    a = [p.probs for p in fp32.predict_batch(items)]
    b = [p.probs for p in int8.predict_batch(items)]
    assert np.abs(np.array(a) - np.array(b)).max() < 0.02
    assert int8.predict(items[0]).settings.cpu_int8 is True
    assert fp32.predict(items[0]).settings.cpu_int8 is False
    # the heatmap comes from the fp32 model: identical to the fp32 predictor's
    prepared = int8.prepare(items[1])
    e8, e32 = int8.explain(prepared, method="gradcam"), fp32.explain(prepared, method="gradcam")
    assert np.array_equal(e8.heatmap, e32.heatmap)


def test_int8_is_cached_once_and_counted(vit_bundle) -> None:
    cache = ModelCache()
    first = Predictor(vit_bundle, "cpu", cache=cache, cpu_int8=True)
    second = Predictor(vit_bundle, "cpu", cache=cache, cpu_int8=True)
    assert first.grader.module is second.grader.module
    fp32_bytes = module_nbytes(first.loaded.module)
    assert cache.total_bytes() == fp32_bytes + int8_nbytes(first.loaded.module)


def test_int8_not_used_for_cnn_or_lora(tmp_path, monkeypatch) -> None:
    cnn = make_tiny_bundle(tmp_path, "tiny-cnn")
    base = make_tiny_bundle(tmp_path, "base", arch=TINY_VIT)
    (lora,) = make_lora_bundles(tmp_path, base, ["lora-a"])
    monkeypatch.setenv("DR_CPU_INT8", "1")  # the environment switch reaches every Predictor
    assert Predictor(base, "cpu", cache=ModelCache()).int8
    for bundle in (cnn, lora):
        p = Predictor(bundle, "cpu", cache=ModelCache())
        assert not p.int8 and p.grader.module is p.loaded.module
