"""Export a bundle's grader to ONNX, prove ONNX Runtime agrees with PyTorch, write a sidecar.

    python -m training.interchange.export --checkpoint models/demo-baseline --format onnx --out model.onnx \
        [--opset 18] [--dynamic-batch]
    python -m training.interchange.export --checkpoint models/demo-baseline --attach   # into the bundle

Why a parity check: an exported graph that silently differs (an op lowered differently, a
folded constant gone wrong) would grade differently from the dashboard. The export is only
kept when ONNX Runtime's logits match PyTorch's on the same input within `rtol` of the
logits' scale; otherwise the .onnx file is deleted and the command fails.

Exporter: opset >= 18 uses torch's torch.export-based exporter (the default since torch 2.9;
needs the `onnxscript` package, works offline). It cannot emit opset < 18 reliably (its
down-converter fails on ViT graphs), so `--opset 17` or lower uses the legacy TorchScript
exporter, which honours the opset. The bundle's tier says what is exported (Tier.exportable):
LoRA bundles are merged into a plain ViT first, so the ONNX graph has no adapter branches.

The model's input is the preprocessed, normalised NCHW float32 tensor (core.preprocessing:
field crop, resize, normalise happen outside the graph); its output is raw logits. The sidecar
JSON (`<out>.onnx.json`) carries the manifest's preprocessing, temperature and operating thresholds
so a consumer can reproduce the dashboard's probabilities and referral decisions.

`--attach` (and every bundle training writes, `onnx: true`) puts the graph inside the bundle
instead (`model.onnx`, dynamic batch axis, same parity check) and records it in the manifest
(`onnx`: file, sha256, the weights it came from, the measured difference); core.onnx_engine
grades with it on the CPU. The weights and their sha256 are left as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.bundle import (
    MANIFEST_FILE,
    Bundle,
    base_of,
    build_bundle_model,
    load_bundle,
    sha256_file,
    tier_of,
)
from core.errors import BundleError, ConfigError, DRError
from core.manifest import OnnxSpec
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE, RETFOUND_LICENSE_NOTICE

DEFAULT_OPSET = 18  # the torch.export-based exporter's lowest native opset
MIN_OPSET = 13
DEFAULT_RTOL = 1e-4
SIDECAR_FORMAT = "dr-screening-onnx/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BUNDLE_GRAPH_FILE = "model.onnx"


class ExportCheckError(DRError):
    """ONNX Runtime's output differs from PyTorch's: the exported file must not be used."""


@dataclass(frozen=True)
class ParityCheck:
    """ONNX Runtime vs PyTorch logits on one seeded random batch."""

    max_abs_diff: float
    max_abs_reference: float
    rtol: float
    batch: int

    @property
    def tolerance(self) -> float:
        """rtol relative to the logits' scale (at least 1, so near-zero logits are not held
        to an absolute 1e-4 x tiny bound that float32 rounding alone can exceed)."""
        return self.rtol * max(1.0, self.max_abs_reference)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path | None
    check: ParityCheck
    opset: int
    exporter: str


def exportable_model(bundle: Bundle) -> nn.Module:
    """The bundle's grader as one plain fp32 module in eval mode (LoRA merged)."""
    if "icdr_grade" not in bundle.manifest.outputs:
        raise BundleError(
            f"Bundle {bundle.name!r} outputs {list(bundle.manifest.outputs)}, not ICDR grades: "
            "it is an encoder for training. Fine-tune it (python -m training.train_retfound or "
            "train_lora) and export the resulting bundle instead.")
    model = tier_of(bundle).exportable(build_bundle_model(bundle))
    return model.float().eval()


def export_onnx(bundle: Bundle | str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, rtol: float = DEFAULT_RTOL,
                seed: int = 0, sidecar: bool = True) -> ExportResult:
    """Export, verify with ONNX Runtime, write the sidecar. Raises ExportCheckError on mismatch
    (the .onnx file is removed so that it cannot be used by mistake)."""
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old; use {MIN_OPSET} or newer "
                          f"(default {DEFAULT_OPSET}).")
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = exportable_model(bundle)
    size = bundle.manifest.preprocessing.input_size
    example = _random_batch(2 if dynamic_batch else 1, size, seed)
    exporter = _export_graph(model, example, out, opset=opset, dynamic_batch=dynamic_batch)
    probe = _random_batch(3 if dynamic_batch else 1, size, seed + 1)
    check = check_onnx(out, model, probe, rtol=rtol)
    if not check.ok:
        _remove(out)
        raise ExportCheckError(
            f"ONNX Runtime disagrees with PyTorch for {bundle.name!r}: max abs diff "
            f"{check.max_abs_diff:.3g} > tolerance {check.tolerance:.3g}. The file was removed; "
            "try another --opset (e.g. 17 for the TorchScript exporter) or report the model.")
    actual_opset = _onnx_opset(out)
    side = (write_sidecar(bundle, out, check, actual_opset, exporter, dynamic_batch) if sidecar
            else None)
    return ExportResult(out, side, check, actual_opset, exporter)


def attach_onnx(bundle: Bundle | str | Path, *, opset: int = DEFAULT_OPSET,
                rtol: float = DEFAULT_RTOL) -> Bundle:
    """Write the bundle's grader as `model.onnx` (dynamic batch) into its folder, verified
    against PyTorch, and record it in manifest.json (nothing else in the manifest changes).
    Raises ExportCheckError (no graph recorded) when ONNX Runtime disagrees."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    result = export_onnx(bundle, bundle.path / BUNDLE_GRAPH_FILE, opset=opset,
                         dynamic_batch=True, rtol=rtol, sidecar=False)
    import onnx

    graph = onnx.load(str(result.onnx_path), load_external_data=False).graph
    base = base_of(bundle).manifest.weights.sha256 if tier_of(bundle).needs_base else None
    spec = OnnxSpec(file=BUNDLE_GRAPH_FILE, sha256=sha256_file(result.onnx_path),
                    weights_sha256=bundle.manifest.weights.sha256, base_sha256=base,
                    opset=result.opset, max_abs_diff=result.check.max_abs_diff,
                    outputs=tuple(o.name for o in graph.output))
    manifest = dataclasses.replace(bundle.manifest, onnx=spec)
    (bundle.path / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return Bundle(bundle.path, manifest)


def attach_or_warn(bundle: Bundle) -> Bundle:
    """attach_onnx for the trainers: a graph that fails its check is left out (the bundle
    then grades with PyTorch) and said on stderr, never a lost training run."""
    try:
        return attach_onnx(bundle)
    except DRError as exc:
        print(f"warning: {bundle.name}: no ONNX graph written ({exc}); it grades with "
              "PyTorch", file=sys.stderr)
        return bundle


def check_onnx(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor, *,
               rtol: float = DEFAULT_RTOL) -> ParityCheck:
    """Run the same batch through ONNX Runtime (CPU) and `model`; report the max abs diff."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        ref = model.eval()(inputs.float()).numpy()
    if got.shape != ref.shape:
        return ParityCheck(float("inf"), float(np.abs(ref).max()), rtol, len(inputs))
    return ParityCheck(float(np.abs(got - ref).max()), float(np.abs(ref).max()), rtol,
                       len(inputs))


def write_sidecar(bundle: Bundle, onnx_path: Path, check: ParityCheck, opset: int,
                  exporter: str, dynamic_batch: bool) -> Path:
    """`<file>.onnx.json`: what a consumer needs besides the graph (inputs, calibration,
    thresholds, notices), copied from the manifest so the two cannot drift apart."""
    import onnx
    import onnxruntime

    m = bundle.manifest
    size = m.preprocessing.input_size
    batch = "batch" if dynamic_batch else 1
    notices = [RESEARCH_USE_NOTICE] + ([DEMO_NOTICE] if m.demo else [])
    if m.license and "CC BY-NC" in m.license:
        notices.append(RETFOUND_LICENSE_NOTICE)
    data = {
        "format": SIDECAR_FORMAT,
        "model": {"name": m.name, "version": m.version, "tier": m.tier, "demo": m.demo,
                  "bundle_key": bundle.key, "base_bundle": m.base_bundle, "license": m.license,
                  "architecture": dataclasses.asdict(m.architecture),
                  "lora_merged": tier_of(bundle).needs_base},  # adapters folded into the base
        "onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "opset": opset,
                 "exporter": exporter, "torch": torch.__version__, "onnx": onnx.__version__,
                 "onnxruntime": onnxruntime.__version__,
                 "input": {"name": INPUT_NAME, "shape": [batch, 3, size, size],
                           "dtype": "float32", "layout": "NCHW, RGB, normalised"},
                 "output": {"name": OUTPUT_NAME, "shape": [batch, len(m.classes)],
                            "meaning": _logits_meaning(m.calibration)}},
        "classes": list(m.classes),
        "preprocessing": dataclasses.asdict(m.preprocessing),
        "preprocessing_note": "Apply core.preprocessing.preprocess (field crop, resize, "
                              "normalise) before the graph; it is not part of the ONNX model.",
        "calibration": dataclasses.asdict(m.calibration),
        "decision_rule": "p_referable = sum(probs[2:]) >= referable_threshold; "
                         "p_vision_threatening = sum(probs[3:]) >= vision_threatening_threshold; "
                         + _grade_rule(m.calibration),
        "parity": dataclasses.asdict(check) | {"tolerance": check.tolerance, "ok": check.ok},
        "notices": notices,
    }
    path = onnx_path.with_name(onnx_path.name + ".json")
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _logits_meaning(cal) -> str:
    """How calibrated probabilities come from the graph's output, as core.predict computes them."""
    meaning = "raw logits; probs = softmax(logits / temperature)"
    if cal.dme_threshold is not None:
        meaning = ("raw logits, 6 columns: the 5 ICDR grades, probs = softmax(logits[:, :5] / "
                   "temperature), then the DME head, p(DME) = sigmoid(logits[:, 5] / "
                   "dme_temperature), DME if p(DME) >= dme_threshold")
    if cal.flip_tta:
        meaning += (", where logits = (graph(x) + graph(x mirrored left-right, i.e. flipped on "
                    "the width axis)) / 2: calibration.flip_tta, the temperature and thresholds "
                    "were fitted that way")
    return meaning


def _grade_rule(cal) -> str:
    """core.grading.decide's grade, as a formula for users of the ONNX graph."""
    band = ("the band the flags allow (vision-threatening: 3-4; referable: 2; neither: 0-1)")
    if cal.grade_thresholds is None:
        return f"grade = the most probable grade inside {band}"
    rule = f"grade = number of grade_thresholds <= sum(g * probs[g]), clipped into {band}"
    if cal.vt_grade_by_probability:
        rule += "; if vision-threatening: grade = 3 if probs[3] >= probs[4] else 4"
    return rule


def _export_graph(model: nn.Module, example: torch.Tensor, out: Path, *, opset: int,
                  dynamic_batch: bool) -> str:
    """torch.onnx.export with the exporter that honours `opset`; returns its name."""
    import warnings

    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if opset >= DEFAULT_OPSET:
        dims = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        torch.onnx.export(model, (example,), str(out), dynamo=True, dynamic_shapes=dims,
                          external_data=False, verbose=False, **common)
        return "torch.export (dynamo)"
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # legacy exporter: deprecation + tracer notes, on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(out), dynamo=False, dynamic_axes=axes,
                          do_constant_folding=True, **common)
    return "torchscript (legacy)"


def _onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _random_batch(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.interchange.export",
                                     description="Export a bundle to ONNX and verify it with "
                                                 "ONNX Runtime.")
    parser.add_argument("--checkpoint", required=True,
                        help="bundle folder (e.g. models/demo-baseline)")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--out", help="output .onnx path (sidecar: <out>.onnx.json)")
    parser.add_argument("--attach", action="store_true",
                        help="write the graph into the bundle (model.onnx, dynamic batch) and "
                             "record it in its manifest: the CPU then grades with ONNX Runtime")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; < 18 uses the TorchScript "
                             "exporter)")
    parser.add_argument("--dynamic-batch", action="store_true", help="variable batch dimension")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help="parity tolerance relative to the logits' scale")
    args = parser.parse_args(argv)
    if args.attach == bool(args.out):
        parser.error("give either --out FILE or --attach")
    if args.attach:
        try:
            bundle = attach_onnx(args.checkpoint, opset=args.opset, rtol=args.rtol)
        except DRError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        spec = bundle.manifest.onnx
        print(f"attached {bundle.path / spec.file} (opset {spec.opset}, sha256 "
              f"{spec.sha256[:16]}...); ONNX Runtime vs PyTorch max abs diff "
              f"{spec.max_abs_diff:.3g}: OK")
        return 0
    try:
        result = export_onnx(args.checkpoint, args.out, opset=args.opset,
                             dynamic_batch=args.dynamic_batch, rtol=args.rtol)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result.check
    print(f"exported {result.onnx_path} (opset {result.opset}, {result.exporter}); ONNX Runtime "
          f"vs PyTorch max abs diff {c.max_abs_diff:.3g} (tolerance {c.tolerance:.3g}, batch "
          f"{c.batch}): OK")
    print(f"sidecar: {result.sidecar_path}")
    print(RESEARCH_USE_NOTICE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
