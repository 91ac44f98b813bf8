"""The shared model cache: one load per bundle, LoRA adapters sharing one base, a memory bound."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.bundle import build_bundle_model, load_bundle
from core.cache import ModelCache, module_nbytes
from core.errors import BundleError
from core.predict import Predictor
from tests.helpers import TINY_VIT, fundus_like, make_lora_bundles, make_tiny_bundle


@pytest.fixture
def lora_setup(tmp_path):
    base = make_tiny_bundle(tmp_path, "base-vit", arch=TINY_VIT)
    adapters = make_lora_bundles(tmp_path, base, ["lora-a", "lora-b", "lora-c"])
    return base, adapters


def test_same_bundle_loads_once(tmp_path):
    bundle = make_tiny_bundle(tmp_path)
    cache = ModelCache()
    first, second = cache.get(bundle, "cpu"), cache.get(bundle, "cpu")
    assert first.module is second.module


def test_concurrent_first_use_loads_once(tmp_path):
    bundle = make_tiny_bundle(tmp_path)
    cache = ModelCache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(bundle, "cpu").module))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1


def test_three_lora_bundles_share_one_base(lora_setup):
    base, adapters = lora_setup
    cache = ModelCache()
    loaded = [cache.get(load_bundle(b.path), "cpu") for b in adapters]
    assert loaded[0].module is loaded[1].module is loaded[2].module
    qkv = [m.module.vit.blocks[0].attn.qkv.weight.data_ptr() for m in loaded]
    assert len(set(qkv)) == 1
    modules = cache.loaded_modules()
    assert len(modules) == 1  # one host; adapters are plain tensor dicts
    base_bytes = module_nbytes(build_bundle_model(base))
    assert cache.total_bytes() < base_bytes * 1.6  # one base + LoRA/head tensors, not three


def test_shared_host_gives_each_adapter_its_own_outputs(lora_setup):
    _, adapters = lora_setup
    cache = ModelCache()
    image = fundus_like(0)
    shared = [Predictor(b, "cpu", cache=cache) for b in adapters]
    alone = [Predictor(b, "cpu", cache=ModelCache()) for b in adapters]
    for _ in range(2):  # switch back and forth
        for s, a in zip(shared, alone, strict=True):
            np.testing.assert_allclose(s.predict(image).probs, a.predict(image).probs, atol=1e-6)
    assert shared[0].predict(image).probs != shared[1].predict(image).probs


def test_lora_bundle_matches_its_in_memory_model(lora_setup):
    _, adapters = lora_setup
    model = build_bundle_model(load_bundle(adapters[0].path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        direct = model(x)
    loaded = ModelCache().get(adapters[0], "cpu")
    with loaded.use() as host, torch.no_grad():
        assert torch.allclose(host(x), direct, atol=1e-6)


def test_missing_base_is_a_clear_error(lora_setup, tmp_path):
    base, adapters = lora_setup
    import shutil

    shutil.rmtree(base.path)
    with pytest.raises(BundleError, match="base bundle"):
        ModelCache().get(load_bundle(adapters[0].path), "cpu")


def test_memory_bound_evicts_least_recently_used(tmp_path):
    a = make_tiny_bundle(tmp_path, "a")
    b = make_tiny_bundle(tmp_path, "b", seed=1)
    one = module_nbytes(build_bundle_model(a))
    cache = ModelCache(max_bytes=int(one * 1.5))
    first = cache.get(a, "cpu").module
    cache.get(b, "cpu")
    assert cache.total_bytes() <= one * 1.5
    assert cache.get(a, "cpu").module is not first  # reloaded after eviction
