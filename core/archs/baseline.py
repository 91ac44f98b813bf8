"""Tier 1: `DRClassifier`, any timm backbone with a fresh dropout + linear head.

The API is the seed documents' contract. Offline is the normal case here, so asking for
pretrained weights without a local file is an error that names the offline alternative;
it never falls back to random weights silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from core.archs.imagenet_weights import create_pretrained, has_package_weights
from core.errors import ConfigError, WeightsUnavailableError
from core.settings import current as current_settings


def _check_model_name(model_name: str) -> None:
    """Unknown names fail early with the closest timm names as suggestions."""
    if timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models()."
    raise ConfigError(f"Unknown timm model name {model_name!r}.{hint}")


def _create_backbone(model_name: str, pretrained: bool, weights_path: str | None,
                     **timm_kwargs: Any) -> nn.Module:
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
    if weights_path is None and has_package_weights(model_name):
        return create_pretrained(model_name, num_classes=0, **timm_kwargs)
    if weights_path is None:
        return _create_from_hub(model_name, **timm_kwargs)
    if not Path(weights_path).is_file():
        raise WeightsUnavailableError(f"Pretrained weights file not found: {weights_path}")
    return timm.create_model(model_name, pretrained=True, num_classes=0,
                             pretrained_cfg_overlay={"file": str(weights_path)}, **timm_kwargs)


def _create_from_hub(model_name: str, **timm_kwargs: Any) -> nn.Module:
    """Hub download only when the user opted in with HF_HUB_OFFLINE=0; wrapped errors otherwise.

    Checked here, before timm is asked, so that a hub lookup fails fast instead of hanging
    (this module used to set HF_HUB_OFFLINE=1 for the whole process when imported).
    """
    offline_hint = (
        f"pretrained=True for {model_name!r} needs ImageNet weights. Pass "
        "weights_path='/path/to/model.safetensors' (a local timm weights file), or "
        "pretrained=False to start from random weights on purpose."
    )
    if not current_settings().hub_downloads:
        raise WeightsUnavailableError(offline_hint + " (Hub downloads are off: HF_HUB_OFFLINE=1; "
                                      "set HF_HUB_OFFLINE=0 on a machine with internet access.)")
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, **timm_kwargs)
    except Exception as exc:  # network, missing tag, auth: all mean "no weights"
        raise WeightsUnavailableError(f"{offline_hint} Download failed: {exc}") from exc


# The model-architecture guide's YAML names -> DRClassifier's argument names.
_GUIDE_KEYS = {"name": "model_name", "dropout": "dropout_rate"}


class DRClassifier(nn.Module):
    """A timm backbone (its own head removed) + dropout + Linear(num_features, num_classes)."""

    def __init__(self, model_name: str, num_classes: int = 5, pretrained: bool = True,
                 dropout_rate: float = 0.3, weights_path: str | None = None,
                 dme_head: bool = False, **timm_kwargs: Any) -> None:
        super().__init__()
        _check_model_name(model_name)
        self.model_name = model_name
        self.num_classes = num_classes
        self.pretrained = bool(pretrained)
        self.backbone = _create_backbone(model_name, pretrained, weights_path, **timm_kwargs)
        self.num_features = int(self.backbone.num_features)
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        # macular oedema (issue 33): a second head on the same features, one logit appended
        # after the grade logits, so export, flip averaging and Grad-CAM see one output tensor
        self.dme_head = nn.Linear(self.num_features, 1) if dme_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.dropout(self.backbone(x))
        logits = self.classifier(features)
        if self.dme_head is None:
            return logits
        return torch.cat([logits, self.dme_head(features)], dim=1)

    def freeze_backbone(self) -> None:
        """Stage 1 of the two-stage recipe: train only the new head."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Stage 2: fine-tune everything."""
        for p in self.backbone.parameters():
            p.requires_grad_(True)

    def get_num_params(self) -> tuple[int, int]:
        """(total, trainable) parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable

    def summary(self) -> str:
        """Print and return the guide's summary lines (plus the parameter counts)."""
        total, trainable = self.get_num_params()
        text = "\n".join([
            f"\u2713 Created DRClassifier with backbone: {self.model_name}",
            f"  - Feature dimension: {self.num_features}",
            f"  - Output classes: {self.num_classes}",
            f"  - Dropout rate: {self.dropout.p:g}",
            f"  - Pretrained: {self.pretrained}",
            f"  - Size: {total:,} parameters ({trainable:,} trainable)",
        ])
        print(text)
        return text

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DRClassifier:
        """Build from a config mapping: a bundle's kwargs or the guide's `model` section.

        The guide's keys are accepted as written (`name`, `dropout`, `freeze_backbone`, and
        `type` when it names this tier); mixing a guide key with its own name is an error.
        """
        allowed = {"model_name", "num_classes", "pretrained", "dropout_rate", "weights_path", "dme_head",
                   "drop_path_rate", "drop_rate", *_GUIDE_KEYS, "freeze_backbone", "type"}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ConfigError(f"Unknown DRClassifier option(s) {unknown}; allowed: {sorted(allowed)}")
        kwargs = dict(cfg)
        kind = kwargs.pop("type", None)
        if kind not in (None, "baseline"):
            raise ConfigError(f"model type {kind!r} is not a DRClassifier; build it with "
                              "core.archs.retfound.load_retfound_model or core.archs.lora.RETFoundLoRA")
        for guide_key, own_key in _GUIDE_KEYS.items():
            if guide_key in kwargs:
                if own_key in kwargs:
                    raise ConfigError(f"Give either {guide_key!r} or {own_key!r}, not both")
                kwargs[own_key] = kwargs.pop(guide_key)
        freeze = kwargs.pop("freeze_backbone", False)
        if "model_name" not in kwargs:
            raise ConfigError("DRClassifier config needs 'model_name' or 'name' (a timm model name)")
        model = cls(**kwargs)
        if freeze:
            model.freeze_backbone()
        return model
