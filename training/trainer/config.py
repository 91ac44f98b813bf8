"""Typed training configs: YAML + `--set key=value` overrides, unknown keys rejected.

One config shape for all tiers; the tier decides which model fields matter. The fields live in
`training.trainer.schema`; this module reads a file in the project's layout or the guide's
(`training.trainer.guide_config`) into them, and is where callers import both from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.archs.tiers import tier_names
from core.errors import ConfigError
from core.strict import parse_strict
from training.trainer.guide_config import Config, guide_to_train_dict, is_guide_layout
from training.trainer.schema import DataConfig, ModelConfig, OptimConfig, SourceConfig, TrainConfig

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "SourceConfig",
           "TrainConfig", "apply_overrides", "assign_dotted", "load_config", "read_yaml",
           "save_config"]


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                **defaults: Any) -> TrainConfig:
    """YAML file (optional) + "a.b=value" overrides (YAML-typed) -> validated TrainConfig."""
    data = read_yaml(path)
    if is_guide_layout(data):  # the model-architecture guide's YAML: see training.trainer.guide_config
        data = guide_to_train_dict(data, source=str(path))
    for key, value in defaults.items():
        if value is not None:
            assign_dotted(data, key, value)
    apply_overrides(data, overrides, example="optim.lr=1e-4")
    source = str(path or "config")
    config = parse_strict(TrainConfig, data, source=source, error=ConfigError)
    if config.model.tier not in tier_names():
        raise ConfigError(f"{source}: field 'model.tier': must be one of {list(tier_names())}, "
                          f"got {config.model.tier!r}")
    _check_distill(config.optim, source)
    if config.model.dme_head and config.model.tier != "baseline":
        raise ConfigError(f"{source}: field 'model.dme_head': only the baseline tier has a DME "
                          f"head so far, not {config.model.tier!r}")
    if not 0.0 < config.data.train_fraction <= 1.0:
        raise ConfigError(f"{source}: field 'data.train_fraction': must be in (0, 1], got "
                          f"{config.data.train_fraction}")
    config.data.check(source)
    return config


def _check_distill(optim: OptimConfig, source: str) -> None:
    """Ranges of the distillation settings (the teacher bundle itself: training.trainer.distill)."""
    if not 0.0 <= optim.distill_alpha <= 1.0:
        raise ConfigError(f"{source}: field 'optim.distill_alpha': must lie in [0, 1] (the "
                          f"weight of the teacher's soft targets), got {optim.distill_alpha!r}")
    if not 0.0 < optim.distill_temperature < float("inf"):
        raise ConfigError(f"{source}: field 'optim.distill_temperature': must be finite and > 0, got "
                          f"{optim.distill_temperature!r}")
    if optim.distill_from is not None and not str(optim.distill_from).strip():
        raise ConfigError(f"{source}: field 'optim.distill_from': empty; give a grader bundle "
                          "folder (e.g. models/demo-baseline) or null")


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """A config file's mapping ({} for no file); unreadable YAML is a ConfigError."""
    if path is None:
        return {}
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read config {path}: {exc}") from exc


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, *, example: str) -> None:
    """`--set a.b=value` items (values YAML-typed) written into data."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. {example})")
        key, raw = item.split("=", 1)
        assign_dotted(data, key.strip(), yaml.safe_load(raw))


def assign_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data['a']['b'] = value for 'a.b' (an override), creating sections on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Cannot set {dotted!r}: {part!r} is not a section")
    node[leaf] = list(value) if isinstance(value, tuple) else value

