"""DR_MODEL_CACHE_MB bounds the dashboard's models although the pages keep up to 16 Predictors
in st.cache_resource: those Predictors hold no model of their own."""

from __future__ import annotations

import gc
import weakref

import pytest

from core import cache as core_cache
from core.bundle import load_bundle
from dashboard.components import bundles
from tests.helpers import fundus_like, make_tiny_bundle


@pytest.fixture
def one_model_cache(monkeypatch):
    monkeypatch.setattr(core_cache, "_DEFAULT", core_cache.ModelCache(max_bytes=1))
    bundles._shared_cache.clear()
    bundles._predictor.clear()
    yield core_cache._DEFAULT
    bundles._shared_cache.clear()
    bundles._predictor.clear()


def test_cached_predictors_do_not_pin_evicted_models(tmp_path, one_model_cache):
    found = [load_bundle(make_tiny_bundle(tmp_path, f"p{i}", seed=i).path) for i in range(3)]
    photo = fundus_like(2, 192)
    refs = []
    for _ in range(2):  # every page rerun: the same cached Predictors, one model at a time
        for bundle in found:
            predictor = bundles.predictor_for(bundle)
            assert predictor.predict(photo).grade is not None
            refs.append(weakref.ref(predictor.loaded.module))
            del predictor
            gc.collect()
            assert sum(r() is not None for r in refs) == 1
    assert bundles.predictor_for(found[0]) is bundles.predictor_for(found[0])  # still cached
    assert len(one_model_cache.loaded_modules()) == 1
