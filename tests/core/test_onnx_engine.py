"""CPU grading on ONNX Runtime (core.onnx_engine): same answers as PyTorch, recorded truthfully,
and every reason not to use a graph falls back to PyTorch with one log line, never a failed
grade."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from core import onnx_engine, settings
from core.bundle import MANIFEST_FILE, load_bundle
from core.cache import ModelCache
from core.manifest import CalibrationSpec
from core.predict import Predictor
from tests.helpers import decision_fields, fundus_like, make_tiny_bundle
from training.interchange.export import attach_onnx


@pytest.fixture(scope="module")
def graph_bundle(tmp_path_factory):
    """A tiny flip-TTA bundle with its graph attached (the export runs once per module)."""
    folder = tmp_path_factory.mktemp("onnx")
    bundle = make_tiny_bundle(folder, "tiny", calibration=CalibrationSpec(flip_tta=True))
    return attach_onnx(bundle)


@pytest.fixture
def copy_of(graph_bundle, tmp_path):
    def make(name: str = "copy"):
        shutil.copytree(graph_bundle.path, tmp_path / name)
        return load_bundle(tmp_path / name)
    return make


@pytest.fixture(autouse=True)
def _fresh_log_memo(monkeypatch):
    monkeypatch.setattr(onnx_engine, "_told", set())


def _predictor(bundle, **kw) -> Predictor:
    return Predictor(bundle, "cpu", cache=ModelCache(), **kw)


def _rewrite_manifest(bundle, **onnx_changes):
    data = json.loads((bundle.path / MANIFEST_FILE).read_text())
    data["onnx"].update(onnx_changes)
    (bundle.path / MANIFEST_FILE).write_text(json.dumps(data))
    return load_bundle(bundle.path)


def test_attach_records_the_graph_and_leaves_the_weights_alone(graph_bundle, tmp_path):
    spec = graph_bundle.manifest.onnx
    assert spec is not None and (graph_bundle.path / spec.file).is_file()
    assert spec.weights_sha256 == graph_bundle.manifest.weights.sha256
    assert spec.max_abs_diff < 1e-4 and spec.outputs == ("logits",)
    again = load_bundle(graph_bundle.path)
    assert dataclasses.replace(again.manifest, onnx=None) == dataclasses.replace(
        graph_bundle.manifest, onnx=None)


@pytest.mark.parametrize("tta", [True, False])
def test_onnx_grades_as_pytorch_does_and_says_so(graph_bundle, tta):
    torch_before = torch.get_num_threads()
    cache = ModelCache()
    on = Predictor(graph_bundle, "cpu", cache=cache, tta=tta, max_batch=3)
    with settings.override(cpu_onnx=False):
        off = Predictor(graph_bundle, "cpu", cache=cache, tta=tta, max_batch=3)
    assert (on.engine, off.engine) == ("onnxruntime", "pytorch")
    images = [fundus_like(s) for s in range(5)]
    a, b = on.predict_batch(images), off.predict_batch(images)
    for x, y in zip(a, b, strict=True):
        assert x.gradable
        np.testing.assert_allclose(x.probs, y.probs, rtol=0, atol=1e-5)
        assert decision_fields(x) == decision_fields(y)
        assert (x.settings.engine, y.settings.engine) == ("onnxruntime", "pytorch")
    assert on.settings().to_json()["engine"] == "onnxruntime"
    assert torch.get_num_threads() == torch_before  # no process-wide thread setting moved


def test_setting_turns_it_off(graph_bundle, monkeypatch):
    monkeypatch.setenv("DR_CPU_ONNX", "0")
    assert _predictor(graph_bundle).engine == "pytorch"
    monkeypatch.setenv("DR_CPU_ONNX", "1")
    assert _predictor(graph_bundle).engine == "onnxruntime"


def test_int8_and_bundles_without_a_graph_use_pytorch(tmp_path, graph_bundle):
    plain = make_tiny_bundle(tmp_path, "plain")
    assert plain.manifest.onnx is None and _predictor(plain).engine == "pytorch"
    assert _predictor(graph_bundle, cpu_int8=True).engine == "onnxruntime"  # CNN: no int8
    vit = load_bundle(settings.REPO / "models" / "demo-retfound")  # a shipped ViT with a graph
    int8 = _predictor(vit, cpu_int8=True)
    assert int8.int8 and int8.engine == "pytorch"  # int8 stays PyTorch's dynamic int8
    assert int8.predict(fundus_like(3)).settings.engine == "pytorch"


@pytest.mark.parametrize("break_it", ["tampered", "missing", "stale weights", "not a graph"])
def test_an_unusable_graph_falls_back_with_one_log_line(copy_of, caplog, break_it):
    bundle = copy_of()
    graph = bundle.path / bundle.manifest.onnx.file
    if break_it == "tampered":
        graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    elif break_it == "missing":
        graph.unlink()
    elif break_it == "stale weights":
        bundle = _rewrite_manifest(bundle, weights_sha256="0" * 64)
    else:
        graph.write_bytes(b"not an onnx graph")
        from core.weights import sha256_file
        bundle = _rewrite_manifest(bundle, sha256=sha256_file(graph))
    with caplog.at_level(logging.WARNING, logger="core.onnx_engine"):
        first = _predictor(bundle)
        second = _predictor(bundle)
        result = second.predict(fundus_like(1))
    assert (first.engine, second.engine) == ("pytorch", "pytorch")
    assert result.gradable and result.settings.engine == "pytorch"
    lines = [r for r in caplog.records if r.name == "core.onnx_engine"]
    assert len(lines) == 1 and "PyTorch" in lines[0].getMessage(), lines


def test_a_failing_session_call_grades_with_pytorch(graph_bundle, monkeypatch, caplog):
    pred = _predictor(graph_bundle)
    assert pred.engine == "onnxruntime"

    def boom(*args, **kwargs):
        raise RuntimeError("session died")

    monkeypatch.setattr(onnx_engine.OnnxGrader, "outputs", boom)
    with caplog.at_level(logging.WARNING, logger="core.onnx_engine"):
        result = pred.predict(fundus_like(2))
    assert result.gradable and result.settings.engine == "pytorch" and pred.engine == "pytorch"
    assert any("session died" in r.getMessage() for r in caplog.records)


def test_the_graph_is_cached_once_beside_the_model(graph_bundle):
    cache = ModelCache()
    a = Predictor(graph_bundle, "cpu", cache=cache)
    b = Predictor(graph_bundle, "cpu", cache=cache)
    assert cache.get_onnx(a.bundle) is cache.get_onnx(b.bundle)
    grader = cache.get_onnx(a.bundle)
    assert grader.threads == max(1, torch.get_num_threads())
    assert cache.total_bytes() >= grader.nbytes


def test_the_setting_reads_one_or_zero(monkeypatch):
    from core.errors import ConfigError

    for raw, want in (("", True), ("1", True), ("0", False), ("off", False)):
        monkeypatch.setenv("DR_CPU_ONNX", raw)
        assert settings.current().cpu_onnx is want
    monkeypatch.setenv("DR_CPU_ONNX", "maybe")
    with pytest.raises(ConfigError, match="DR_CPU_ONNX"):
        settings.current()


def test_training_keeps_a_bundle_whose_graph_fails_its_check(tmp_path, monkeypatch, capsys):
    """training.trainer.finalize attaches the graph with attach_or_warn: a failed check leaves the
    bundle without a graph (graded with PyTorch) and says so, never a lost training run."""
    from training.common import onnx_export as export_mod

    bundle = make_tiny_bundle(tmp_path, "trained")

    def failing(*args, **kwargs):
        raise export_mod.ExportCheckError("max abs diff 1 > tolerance 1e-4")

    monkeypatch.setattr(export_mod, "attach_onnx", failing)
    kept = export_mod.attach_or_warn(bundle)
    assert kept.manifest.onnx is None and "no ONNX graph written" in capsys.readouterr().err
    assert _predictor(kept).engine == "pytorch"
