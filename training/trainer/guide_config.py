"""The model-architecture guide's YAML files: `Config.from_yaml(path)`, mapped onto TrainConfig.

Researchers arrive with the guide (MODEL_ARCHITECTURE_GUIDE.md) and its config files: a `model`
section in the guide's key names and a `training` section (learning_rate, batch_size,
num_epochs). `Config` reads such a file strictly: unknown keys are refused by name, and so are
keys of another model type (e.g. `lora_r` on a baseline), which nothing would read.
`Config.model` is also a mapping of exactly the keys the file sets, so
`DRClassifier.from_config(config.model)` gets what was written. `to_train_config()` maps the file
onto the project's own typed `TrainConfig`; `training.trainer.config.load_config` does the same, which is
how the trainers and `python -m training.tuning.hpo` accept these files.

Mapping onto TrainConfig:
- `model.type`: absent or `baseline` -> tier baseline, `retfound` -> retfound, `retfound_lora`
  -> lora. `name`, `pretrained`, `checkpoint_path`, `lora_*`, `head_dropout`, `target_modules`
  keep their names.
- `model.global_pool`: RETFound's boolean (False = CLS token, True = mean of the patch tokens +
  fc_norm) or `avg` / `token`.
- `model.dropout`: baseline -> `model.dropout_rate` (head dropout). retfound ->
  `model.drop_path_rate`: the project's full fine-tuning has no head-dropout setting, and drop path
  is the regulariser it has (the same choice `training.tuning.hpo` makes for "dropout").
- `model.freeze_backbone`: true -> backbone frozen for the whole run; false -> no frozen stage
  (`optim.freeze_epochs` 0).
- `model.num_classes`: the trainers train the 5 DR grades, so anything but 5 is refused there
  (models built in Python take any number).
- `training.learning_rate / batch_size / num_epochs` -> `optim.lr / batch_size / epochs`.
The project's other top-level sections (`data`, `preprocessing`, `optim`, `run_name`, ...) may sit
beside them and pass through unchanged; setting one value twice is an error. Command-line
`--set key=value` overrides apply after the mapping, so they use TrainConfig's keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError
from core.strict import parse_strict
from training.trainer.schema import TrainConfig

__all__ = ["Config", "ModelSection", "TrainingSection", "guide_to_train_dict", "is_guide_layout"]

TIERS = {"baseline": "baseline", "retfound": "retfound", "retfound_lora": "lora"}
TRAINED_CLASSES = 5
FROZEN_FOR_WHOLE_RUN = 1_000_000  # optim.freeze_epochs for `freeze_backbone: true`
_COMMON = {"type", "num_classes"}
_KEYS_BY_TYPE = {
    "baseline": _COMMON | {"name", "pretrained", "dropout", "freeze_backbone"},
    "retfound": _COMMON | {"checkpoint_path", "global_pool", "dropout"},
    "retfound_lora": _COMMON | {"checkpoint_path", "global_pool", "lora_r", "lora_alpha",
                                "lora_dropout", "head_dropout", "target_modules"},
}
_SAME_NAME = ("name", "pretrained", "checkpoint_path", "lora_r", "lora_alpha", "lora_dropout",
              "head_dropout", "target_modules")
_DROPOUT_KEY = {"baseline": "dropout_rate", "retfound": "drop_path_rate"}
_TRAINING_KEYS = {"learning_rate": "lr", "batch_size": "batch_size", "num_epochs": "epochs"}
# model keys only the guide's layout has (the project's ModelConfig spells these differently)
_GUIDE_ONLY_MODEL_KEYS = {"type", "num_classes", "dropout", "freeze_backbone"}


@dataclass(frozen=True)
class ModelSection(Mapping[str, Any]):
    """The guide's `model` section; a mapping of the keys the file sets (None = not set)."""

    type: Literal["baseline", "retfound", "retfound_lora"] | None = None
    name: str | None = None
    num_classes: int | None = None
    pretrained: bool | None = None
    dropout: float | None = None
    freeze_backbone: bool | None = None
    checkpoint_path: str | None = None
    global_pool: Any = None  # RETFound's bool, or "avg" / "token"
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    head_dropout: float | None = None
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        kind = self.type or "baseline"
        foreign = sorted(set(self) - _KEYS_BY_TYPE[kind])
        if foreign:
            raise ConfigError(
                f"model: key(s) {foreign} do not apply to model type {kind!r} (nothing would read "
                f"them); keys for {kind!r}: {sorted(_KEYS_BY_TYPE[kind])}")
        if self.global_pool is not None:
            from core.archs.retfound import global_pool_mode

            try:
                global_pool_mode(self.global_pool)
            except ConfigError as exc:
                raise ConfigError(f"model.global_pool: {exc}") from None

    @property
    def tier(self) -> str:
        """The project's tier name for this model type."""
        return TIERS[self.type or "baseline"]

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in _MODEL_FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _MODEL_FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSection))


@dataclass(frozen=True)
class TrainingSection:
    """The guide's `training` section."""

    learning_rate: float | None = None
    batch_size: int | None = None
    num_epochs: int | None = None


@dataclass(frozen=True)
class _GuideSections:
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()


@dataclass(frozen=True)
class Config:
    """A guide-layout config file: `config.model.name`, `config.training.learning_rate`, ..."""

    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    project: dict[str, Any] = field(default_factory=dict)  # other TrainConfig sections, as written
    source: str = "config"

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Read and validate a guide-layout YAML file."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read config {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        allowed = {"model", "training"} | _project_sections()
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        guide = {k: data[k] or {} for k in ("model", "training") if k in data}
        try:
            sections = parse_strict(_GuideSections, guide, source=source, error=ConfigError)
        except ConfigError as exc:
            msg = str(exc) if str(exc).startswith(source) else f"{source}: {exc}"
            hint = (" (this looks like the project's own layout: read it with "
                    "training.trainer.config.load_config)") if "'tier'" in msg else ""
            raise ConfigError(msg + hint) from None
        project = {k: v for k, v in data.items() if k not in ("model", "training")}
        return cls(sections.model, sections.training, project, source)

    def to_train_dict(self) -> dict[str, Any]:
        """The same settings in TrainConfig's layout (plain YAML values, not yet validated)."""
        m = self.model
        if m.num_classes not in (None, TRAINED_CLASSES):
            raise ConfigError(f"{self.source}: model.num_classes={m.num_classes}: the trainers "
                              f"train the {TRAINED_CLASSES} DR grades; use {TRAINED_CLASSES}")
        model: dict[str, Any] = {"tier": m.tier}
        for key in _SAME_NAME:
            if key in m:
                model[key] = list(m[key]) if isinstance(m[key], tuple) else m[key]
        if "global_pool" in m:
            from core.archs.retfound import global_pool_mode

            model["global_pool"] = global_pool_mode(m.global_pool)
        if "dropout" in m:
            model[_DROPOUT_KEY[m.type or "baseline"]] = m.dropout
        optim = {own: getattr(self.training, key) for key, own in _TRAINING_KEYS.items()
                 if getattr(self.training, key) is not None}
        if "freeze_backbone" in m:
            optim["freeze_epochs"] = FROZEN_FOR_WHOLE_RUN if m.freeze_backbone else 0
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in self.project.items()}
        given = out.setdefault("optim", {})
        if not isinstance(given, dict):
            raise ConfigError(f"{self.source}: field 'optim': expected an object")
        twice = sorted(set(given) & set(optim))
        if twice:
            raise ConfigError(f"{self.source}: {', '.join('optim.' + k for k in twice)} set "
                              "twice (also by training: or model.freeze_backbone); keep one")
        given.update(optim)
        out["model"] = model
        return out

    def to_train_config(self) -> TrainConfig:
        """The project's typed config for the trainers (validated, defaults filled in)."""
        return parse_strict(TrainConfig, self.to_train_dict(), source=self.source,
                            error=ConfigError)


def _project_sections() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}


def is_guide_layout(data: Any) -> bool:
    """True for a file in the guide's layout (a `training` section or guide-only model keys)."""
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    guide_model = isinstance(model, dict) and (
        bool(_GUIDE_ONLY_MODEL_KEYS & set(model)) or isinstance(model.get("global_pool"), bool))
    return "training" in data or guide_model


def guide_to_train_dict(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """A guide-layout mapping (as read from YAML) in TrainConfig's layout."""
    return Config.from_dict(data, source).to_train_dict()
