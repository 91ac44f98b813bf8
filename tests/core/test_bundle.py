"""Bundle round trip, strict manifests and checksum verification."""

from __future__ import annotations

import json

import pytest
import torch

from core.bundle import (
    build_bundle_model,
    discover_bundles,
    load_bundle,
    load_state_dict_exact,
    save_bundle,
)
from core.errors import BundleError
from core.manifest import (
    ArchitectureSpec,
    ExplanationSpec,
    Manifest,
    Provenance,
    WeightsSpec,
    parse_manifest,
)
from core.preprocessing import PreprocessSpec

TINY_ARCH = ArchitectureSpec("timm_classifier", {"model_name": "resnet10t", "num_classes": 5,
                                                 "dropout_rate": 0.0})


def _manifest(**over) -> Manifest:
    fields = dict(name="tiny", version="0.1", tier="baseline", created="2026-11-25T00:00:00Z",
                  architecture=TINY_ARCH, preprocessing=PreprocessSpec(input_size=64),
                  explanation=ExplanationSpec("backbone.layer4"),
                  weights=WeightsSpec("weights.safetensors", ""),
                  provenance=Provenance("unit test"), demo=True)
    fields.update(over)
    return Manifest(**fields)


@pytest.fixture
def saved_bundle(tmp_path):
    from core.archs.registry import build_model

    model = build_model(TINY_ARCH.builder, TINY_ARCH.kwargs).eval()
    bundle = save_bundle(tmp_path / "tiny", _manifest(), model.state_dict())
    return bundle, model


def test_round_trip_gives_identical_outputs(saved_bundle):
    bundle, model = saved_bundle
    x = torch.randn(2, 3, 64, 64)
    loaded = build_bundle_model(load_bundle(bundle.path))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert (bundle.path / "MODEL_CARD.md").read_text().count("Research use only") == 1


def test_manifest_json_round_trip(saved_bundle):
    bundle, _ = saved_bundle
    data = json.loads((bundle.path / "manifest.json").read_text())
    assert parse_manifest(data) == bundle.manifest
    assert len(bundle.manifest.weights.sha256) == 64


def test_corrupted_weights_fail_with_sha_message(saved_bundle):
    bundle, _ = saved_bundle
    raw = bytearray(bundle.weights_path.read_bytes())
    raw[-10] ^= 0xFF
    bundle.weights_path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        build_bundle_model(load_bundle(bundle.path))


def test_unknown_manifest_key_is_named(saved_bundle):
    bundle, _ = saved_bundle
    path = bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    data["calibration"]["temprature"] = 2.0
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"calibration.*temprature"):
        load_bundle(bundle.path)


@pytest.mark.parametrize("drop", ["name", "weights", "architecture"])
def test_missing_required_key_is_named(saved_bundle, drop):
    bundle, _ = saved_bundle
    data = json.loads((bundle.path / "manifest.json").read_text())
    del data[drop]
    with pytest.raises(BundleError, match=f"'{drop}'.*missing"):
        parse_manifest(data)


def test_wrong_type_is_named():
    data = _manifest().to_dict()
    data["preprocessing"]["input_size"] = "224"
    with pytest.raises(BundleError, match=r"preprocessing\.input_size.*expected int"):
        parse_manifest(data)
    data = _manifest().to_dict()
    data["tier"] = "huge"
    with pytest.raises(BundleError, match="tier"):
        parse_manifest(data)


def test_strict_loading_lists_every_bad_key(saved_bundle):
    _, model = saved_bundle
    state = dict(model.state_dict())
    state.pop("classifier.weight")
    state["extra.bias"] = torch.zeros(3)
    state["classifier.bias"] = torch.zeros(7)
    with pytest.raises(BundleError) as info:
        load_state_dict_exact(model, state, "test")
    msg = str(info.value)
    assert "classifier.weight" in msg and "extra.bias" in msg and "classifier.bias (7,)" in msg


def test_discovery_reports_broken_bundles(saved_bundle, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    found = discover_bundles(tmp_path)
    assert [b.name for b in found.bundles] == ["tiny"]
    assert len(found.problems) == 1 and "not valid JSON" in found.problems[0][1]
