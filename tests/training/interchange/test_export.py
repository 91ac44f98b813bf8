"""ONNX export: tiny CNN, ViT and merged-LoRA bundles pass the ONNX Runtime parity check, the
sidecar mirrors the manifest, and a broken graph or an encoder-only bundle is refused."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.errors import BundleError, ConfigError
from core.manifest import CalibrationSpec
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from tests.helpers import TINY_VIT, make_lora_bundles, make_tiny_bundle
from training.common import onnx_export as export_mod
from training.common.onnx_export import ExportCheckError, check_onnx, export_onnx, exportable_model, main


def _ort_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_cnn_bundle_exports_with_dynamic_batch_and_sidecar(tmp_path):
    calibration = CalibrationSpec(temperature=1.7, referable_threshold=0.31,
                                  vision_threatening_threshold=0.22)
    bundle = make_tiny_bundle(tmp_path, "cnn", calibration=calibration)
    result = export_onnx(bundle, tmp_path / "out" / "cnn.onnx", dynamic_batch=True)
    assert result.check.ok and result.check.batch == 3 and result.opset == 18
    x = torch.randn(5, 3, 64, 64)
    ref = exportable_model(bundle)(x).detach().numpy()
    np.testing.assert_allclose(_ort_logits(result.onnx_path, x), ref, atol=1e-4)
    side = json.loads(result.sidecar_path.read_text())
    assert result.sidecar_path.name == "cnn.onnx.json"
    assert side["calibration"] == {"temperature": 1.7, "referable_threshold": 0.31,
                                   "vision_threatening_threshold": 0.22,
                                   "grade_thresholds": None,  # ordinal bundles: 4 cut points
                                   "vt_grade_by_probability": False, "flip_tta": False,
                                   "dme_temperature": 1.0, "dme_threshold": None}  # no DME output
    assert side["onnx"]["output"]["meaning"] == "raw logits; probs = softmax(logits / temperature)"
    assert "grade = the most probable grade inside the band the flags allow" in side[
        "decision_rule"]
    assert side["preprocessing"]["input_size"] == 64
    assert side["onnx"]["input"]["shape"] == ["batch", 3, 64, 64]
    assert side["model"]["bundle_key"] == bundle.key and side["parity"]["ok"] is True
    assert RESEARCH_USE_NOTICE in side["notices"] and DEMO_NOTICE in side["notices"]


def test_vit_bundle_exports_with_fixed_batch(tmp_path):
    bundle = make_tiny_bundle(tmp_path, "vit", TINY_VIT)
    result = export_onnx(bundle, tmp_path / "vit.onnx")
    assert result.check.ok and result.check.batch == 1
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]


def test_sidecar_of_a_flip_tta_bundle_says_how_to_reproduce_its_logits(tmp_path):
    from core.cache import ModelCache
    from core.predict import Predictor

    bundle = make_tiny_bundle(tmp_path, "cnn", calibration=CalibrationSpec(flip_tta=True))
    result = export_onnx(bundle, tmp_path / "out" / "flip.onnx", dynamic_batch=True)
    side = json.loads(result.sidecar_path.read_text())
    assert side["calibration"]["flip_tta"] is True
    assert "mirrored left-right" in side["onnx"]["output"]["meaning"]
    x = torch.randn(2, 3, 64, 64)  # what the sidecar says, done with ONNX Runtime ...
    averaged = (_ort_logits(result.onnx_path, x) + _ort_logits(result.onnx_path,
                                                                torch.flip(x, dims=[3]))) / 2
    served = Predictor(bundle, "cpu", cache=ModelCache()).logits(x).numpy()  # ... is served
    np.testing.assert_allclose(averaged, served, atol=1e-4)


def test_lora_bundle_is_merged_and_legacy_opset_is_honoured(tmp_path):
    base = make_tiny_bundle(tmp_path, "base", TINY_VIT)
    lora = make_lora_bundles(tmp_path, base, ["adapter"])[0]
    merged = exportable_model(lora)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    base_model = exportable_model(base)
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(merged(x), base_model(x))  # the adapter really changed the model
    result = export_onnx(lora, tmp_path / "lora.onnx", opset=17, dynamic_batch=True)
    assert result.check.ok and result.opset == 17 and "torchscript" in result.exporter
    side = json.loads(result.sidecar_path.read_text())
    assert side["model"]["lora_merged"] and side["model"]["base_bundle"] == "base"
    np.testing.assert_allclose(_ort_logits(result.onnx_path, x), merged(x).detach().numpy(),
                               atol=1e-4)


def test_parity_check_detects_a_different_model(tmp_path):
    bundle = make_tiny_bundle(tmp_path, "cnn")
    result = export_onnx(bundle, tmp_path / "ok.onnx", opset=17)
    other = exportable_model(bundle)
    with torch.no_grad():
        other.classifier.weight.add_(0.5)
    check = check_onnx(result.onnx_path, other, torch.randn(1, 3, 64, 64))
    assert not check.ok and check.max_abs_diff > check.tolerance


def test_broken_export_fails_and_leaves_no_files(tmp_path, monkeypatch):
    bundle = make_tiny_bundle(tmp_path, "cnn")
    real = export_mod._export_graph

    def corrupted(model, example, out, **kwargs):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.classifier.bias.add_(1.0)
        return real(broken, example, out, **kwargs)

    monkeypatch.setattr(export_mod, "_export_graph", corrupted)
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportCheckError, match="max abs diff"):
        export_onnx(bundle, out, opset=17)
    assert not out.exists() and not (tmp_path / "broken.onnx.json").exists()


def test_unsupported_bundles_and_settings_are_refused(tmp_path, capsys):
    encoder = make_tiny_bundle(tmp_path, "encoder", TINY_VIT, outputs=("features",))
    with pytest.raises(BundleError, match="encoder"):
        export_onnx(encoder, tmp_path / "enc.onnx")
    cnn = make_tiny_bundle(tmp_path, "cnn")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(cnn, tmp_path / "old.onnx", opset=9)
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "x.onnx")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_cli_exports_and_reports_the_difference(tmp_path, capsys):
    make_tiny_bundle(tmp_path, "cnn")
    code = main(["--checkpoint", str(tmp_path / "cnn"), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx"), "--opset", "17", "--dynamic-batch"])
    out = capsys.readouterr().out
    assert code == 0 and "max abs diff" in out and (tmp_path / "m.onnx.json").is_file()
