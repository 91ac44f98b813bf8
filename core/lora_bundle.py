"""LoRA bundle helpers under their former names; the logic lives in the LoRA tier
(core.archs.tier_lora) and in core.bundle, which asks the tier.

Why this module still exists: callers (trainers, benchmarks, tests) save and inspect LoRA
bundles by these names. It imports core.bundle and nothing imports it back, which is what
broke the bundle <-> lora_bundle import cycle.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from core.archs.tier_lora import HOST_PREFIX as HOST_PREFIX  # re-exported
from core.archs.tier_lora import LORA
from core.bundle import Bundle, base_of, build_bundle_model, build_over_base, read_weights, save_model_bundle
from core.manifest import Manifest

__all__ = ["HOST_PREFIX", "adapter_structure", "base_of", "build_lora_host", "build_lora_model",
           "read_adapter_state", "save_lora_bundle"]


def adapter_structure(bundle: Bundle) -> tuple:
    """Adapters with the same structure can share one host."""
    return LORA.share_key(bundle.path)


def build_lora_host(base: Bundle, lora: Bundle) -> nn.Module:
    """Base model + LoRA layers, with `lora`'s adapter loaded and checked."""
    return build_over_base(base, lora)


def read_adapter_state(lora: Bundle, host: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors (sha256-verified), keyed for `host.load_state_dict(strict=False)`."""
    tensors = read_weights(lora)
    if host is None:
        return {HOST_PREFIX + k: v for k, v in tensors.items()}
    return LORA.adapter_state(lora.path, tensors, host)


def save_lora_bundle(out_dir: str | os.PathLike, host: nn.Module, manifest: Manifest,
                     model_card: str | None = None) -> Bundle:
    """Write adapter_model.safetensors + adapter_config.json, then manifest and card."""
    return save_model_bundle(out_dir, manifest, host, model_card, tier=LORA)


def build_lora_model(lora: Bundle) -> nn.Module:
    """A stand-alone (uncached) model for one LoRA bundle."""
    return build_bundle_model(lora)
