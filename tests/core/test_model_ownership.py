"""The cache is the one owner of loaded models: whatever holds Predictors (the pages keep them
for days), a cache bounded to one model keeps at most one model alive."""

from __future__ import annotations

import gc
import weakref

import torch

from core.cache import ModelCache
from core.predict import Predictor
from tests.helpers import fundus_like, make_tiny_bundle


def _live(refs: list[weakref.ref]) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


def _live_models() -> int:
    """Every top-level model object still in memory (what a second copy would add to)."""
    gc.collect()
    return sum(1 for o in gc.get_objects()
               if isinstance(o, torch.nn.Module) and getattr(o, "_dr_counted", False))


def _track(refs: list[weakref.ref], predictor: Predictor) -> None:
    module = predictor.loaded.module
    module._dr_counted = True
    refs.append(weakref.ref(module))


def test_bounded_cache_keeps_one_model_while_predictors_are_held(tmp_path):
    bundles = [make_tiny_bundle(tmp_path, f"m{i}", seed=i) for i in range(3)]
    cache = ModelCache(max_bytes=1)  # room for one model (the newest is always kept)
    photo = fundus_like(0, 192)
    refs: list[weakref.ref] = []
    held = []  # what st.cache_resource does with the dashboard's Predictors
    for bundle in bundles:
        p = Predictor(bundle, "cpu", cache=cache)
        p.predict(photo)
        _track(refs, p)
        held.append(p)
    assert _live(refs) == 1 and _live_models() == 1
    for p in held:  # every page uses its Predictor again: evicted models reload, one at a time
        assert p.predict(photo).grade is not None
        _track(refs, p)
        assert _live(refs) == 1 and _live_models() == 1
    assert len(cache.loaded_modules()) == 1


def test_a_predictor_follows_a_reload_instead_of_keeping_the_old_copy(tmp_path):
    bundle = make_tiny_bundle(tmp_path)
    cache = ModelCache()
    p = Predictor(bundle, "cpu", cache=cache)
    before = weakref.ref(p.loaded.module)
    cache.clear()
    gc.collect()
    assert before() is None, "the Predictor kept a model the cache had dropped"
    assert p.predict(fundus_like(1, 192)).grade is not None
    assert cache.loaded_modules() == [p.loaded.module]
