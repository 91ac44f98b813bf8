"""Typed records that cross the core -> dashboard boundary.

Why: the pages used to read these as dicts by key (`settings.get('referable_threshold', 0)`)
and matched the end of an English sentence to tell a folder run from an upload, so a renamed
key showed a threshold of 0.000 and a reworded sentence changed what a page offered. A field
of a frozen dataclass fails loudly (and in a type checker) instead. JSON in the database stays
the storage format; `from_json` reads what older versions wrote.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from core.preprocessing import PreprocessSpec

UPLOAD_SOURCE_SUFFIX = "uploaded or listed item(s)"  # how runs before `kind` described uploads


@dataclass(frozen=True)
class PredictionSettings:
    """What a result was decided with: preprocessing, calibration, thresholds, device."""

    preprocessing: PreprocessSpec
    temperature: float
    referable_threshold: float
    vision_threatening_threshold: float
    grade_thresholds: tuple[float, ...] | None
    tta: bool
    device: str
    bundle_key: str
    cpu_int8: bool = False
    vt_grade_by_probability: bool = False  # severe NPDR vs PDR by the more probable
    engine: str = "pytorch"  # what computed the logits: "pytorch" or "onnxruntime"
    dme_threshold: float | None = None  # on p(DME); None: the bundle has no DME output

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunKind(str, Enum):
    """FOLDER: a folder or zip on the server (its photos can be read again later).
    UPLOAD: uploaded or listed items (kept only in the session that sent them)."""

    FOLDER = "folder"
    UPLOAD = "upload"


@dataclass(frozen=True)
class ModelRunSettings:
    """One bundle of a screening run: identity plus the settings its results were made with."""

    name: str
    version: str
    demo: bool
    tier: str
    referable_threshold: float | None = None
    vision_threatening_threshold: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the full PredictionSettings JSON
    dme_threshold: float | None = None  # None: the bundle had no DME output (not assessed)

    @classmethod
    def from_json(cls, key: str, data: dict[str, Any]) -> ModelRunSettings:
        return cls(name=str(data.get("name", key)), version=str(data.get("version", "")),
                   demo=bool(data.get("demo", False)), tier=str(data.get("tier", "")),
                   referable_threshold=_float(data.get("referable_threshold")),
                   vision_threatening_threshold=_float(data.get("vision_threatening_threshold")),
                   settings=dict(data), dme_threshold=_float(data.get("dme_threshold")))


@dataclass(frozen=True)
class RunSettings:
    """A screening run's settings as stored with it (runs.settings JSON)."""

    kind: RunKind
    pattern: str | None = None
    batch_size: int | None = None
    models: dict[str, ModelRunSettings] = field(default_factory=dict)  # bundle key -> settings

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "") -> RunSettings:
        """Also reads runs stored before `kind` existed (their source sentence said it)."""
        kind = data.get("kind")
        if kind is None:
            kind = RunKind.UPLOAD if source.endswith(UPLOAD_SOURCE_SUFFIX) else RunKind.FOLDER
        models = {k: ModelRunSettings.from_json(k, v)
                  for k, v in (data.get("models") or {}).items()}
        batch = data.get("batch_size")
        return cls(RunKind(kind), data.get("pattern"), None if batch is None else int(batch),
                   models)

    def demo_models(self) -> list[str]:
        return [m.name for m in self.models.values() if m.demo]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
