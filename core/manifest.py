"""The bundle manifest: manifest.json parsed into frozen dataclasses.

The manifest is the single source of truth for how a model is built, fed, explained and
calibrated. Parsing is strict (unknown or missing keys and wrong types are errors naming the
field) because a silently ignored typo in a threshold is a clinical risk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from core.archs.specs import ArchitectureSpec, ExplanationSpec  # re-exported: part of the manifest
from core.archs.tiers import get_tier, tier_names
from core.errors import BundleError
from core.grading import Thresholds
from core.preprocessing import PreprocessSpec
from core.strict import parse_strict, to_jsonable

SCHEMA_VERSION = 1
ICDR_CLASSES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")


@dataclass(frozen=True)
class CalibrationSpec:
    """Temperature scaling and the operating points chosen on the validation set."""

    temperature: float = 1.0
    referable_threshold: float = 0.5  # on p(grade >= 2)
    vision_threatening_threshold: float = 0.5  # on p(grade >= 3)
    grade_thresholds: tuple[float, ...] | None = None  # ordinal: 4 cut points on E[grade]
    # ordinal: severe NPDR vs PDR by the more probable of the two (training.evaluation.operating_rules)
    vt_grade_by_probability: bool = False
    # fitted on logits averaged over the photo and its mirror image, so served that way too
    flip_tta: bool = False
    # DME output (manifest outputs lists "dme"): its own temperature and threshold, fitted on
    # the calibration split for sensitivity first; None where the bundle has no DME output
    dme_temperature: float = 1.0
    dme_threshold: float | None = None

    def thresholds(self) -> Thresholds:
        """The operating rule core.grading.decide serves with."""
        cuts = None if self.grade_thresholds is None else tuple(self.grade_thresholds)
        return Thresholds(self.referable_threshold, self.vision_threatening_threshold, cuts,
                          vt_grade_by_probability=self.vt_grade_by_probability,
                          dme=self.dme_threshold)


@dataclass(frozen=True)
class WeightsSpec:
    """The weights file inside the bundle folder and its sha256 (verified on every load)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class OnnxSpec:
    """The bundle's ONNX graph (same logits as the PyTorch model, dynamic batch axis): its file,
    sha256 (verified before ONNX Runtime loads it), and what it was exported from and checked
    against. `weights_sha256` / `base_sha256` name the weights (and a LoRA bundle's base weights)
    the graph was exported from: a graph left behind by weights written later is not used."""

    file: str
    sha256: str
    weights_sha256: str
    base_sha256: str | None = None
    opset: int = 18
    max_abs_diff: float = 0.0  # ONNX Runtime vs PyTorch logits, checked when written
    outputs: tuple[str, ...] = ("logits",)  # graph outputs in order; the first is grade logits


@dataclass(frozen=True)
class Provenance:
    """Where the model came from, so a result can be traced to data and config."""

    training_data: str
    config_hash: str | None = None
    run_dir: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything the dashboard needs to know about one model bundle."""

    name: str
    version: str
    tier: str  # a registered tier (core.archs.tiers): "baseline" | "retfound" | "lora" | ...
    created: str
    architecture: ArchitectureSpec
    preprocessing: PreprocessSpec
    explanation: ExplanationSpec
    weights: WeightsSpec
    provenance: Provenance
    demo: bool
    classes: tuple[str, ...] = ICDR_CLASSES
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    base_bundle: str | None = None  # LoRA: folder name of the base bundle beside this one
    license: str | None = None
    outputs: tuple[str, ...] = ("icdr_grade",)  # "dme" only if the model really predicts it
    onnx: OnnxSpec | None = None  # the same grader as an ONNX graph (CPU grading, core.onnx_engine)
    schema_version: int = SCHEMA_VERSION

    @property
    def has_dme(self) -> bool:
        """The model has a DME output (parse_manifest checks its threshold came with it)."""
        return "dme" in self.outputs

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


def parse_manifest(data: Any, source: str = "manifest.json") -> Manifest:
    """Parse a decoded JSON object; any problem raises BundleError naming the field."""
    manifest = parse_strict(Manifest, data, source=source, error=BundleError)
    if manifest.schema_version > SCHEMA_VERSION:
        raise BundleError(f"{source}: schema_version {manifest.schema_version} is newer than this "
                          f"software understands ({SCHEMA_VERSION}); update the dashboard.")
    if manifest.tier not in tier_names():
        raise BundleError(f"{source}: field 'tier': must be one of {list(tier_names())}, got "
                          f"{manifest.tier!r}")
    if get_tier(manifest.tier).needs_base and not manifest.base_bundle:
        raise BundleError(f"{source}: a {manifest.tier!r} bundle needs 'base_bundle' (its base "
                          "model folder)")
    _check_outputs(manifest, source)
    if len(manifest.classes) != 5:
        raise BundleError(f"{source}: classes must list the 5 ICDR grades, got {len(manifest.classes)}")
    return manifest


KNOWN_OUTPUTS = ("icdr_grade", "dme", "features")


def _check_outputs(manifest: Manifest, source: str) -> None:
    """A DME output and its calibrated threshold come together: a card must never show a DME
    verdict from an uncalibrated output, nor a threshold for an output the model lacks."""
    unknown = [o for o in manifest.outputs if o not in KNOWN_OUTPUTS]
    if unknown:
        raise BundleError(f"{source}: field 'outputs': unknown {unknown}; known {list(KNOWN_OUTPUTS)}")
    has_dme, has_threshold = "dme" in manifest.outputs, manifest.calibration.dme_threshold is not None
    if has_dme != has_threshold:
        raise BundleError(f"{source}: outputs {'lists' if has_dme else 'lacks'} 'dme' but "
                          f"calibration.dme_threshold is {'missing' if has_dme else 'set'}")
