"""How a bundle's network is built and explained: the manifest's `architecture` and `explanation`.

Why here and not in core.manifest: the tiers (core.archs.tier_*) produce these when they train
and read them when they build, and core.manifest asks the tier registry which tier names exist,
so the two specs sit below both. core.manifest re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ArchitectureSpec:
    """Which registered builder makes the network, with its keyword arguments."""

    builder: str  # "timm_classifier" | "retfound_vit" (see core.archs.registry)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExplanationSpec:
    """Defaults for heatmaps: the layer to hook and how to fold its activations."""

    target_layer: str  # dotted module name, e.g. "backbone.layer4" or "blocks.11.norm1"
    method: str = "gradcam"
    arch: Literal["cnn", "vit", "swin"] = "cnn"
