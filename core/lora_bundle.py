"""LoRA bundles: adapters + head stored apart from the base bundle they adapt.

A LoRA bundle's manifest names `base_bundle` (a sibling folder). Loading builds the base once,
installs LoRA layers on it (the "host"), and loads the adapter. The cache keeps one host per
base and adapter structure and copies each adapter's few-MB tensors in before use.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from core.archs.lora import ADAPTER_WEIGHTS, RETFoundLoRA, read_adapter_config
from core.bundle import Bundle, build_bundle_model, finalize_bundle, load_bundle, read_weights
from core.errors import BundleError
from core.manifest import Manifest, WeightsSpec

HOST_PREFIX = "vit."  # RETFoundLoRA keeps the timm model at .vit


def base_of(bundle: Bundle) -> Bundle:
    """The base bundle a LoRA bundle names, loaded from beside it."""
    if bundle.manifest.tier != "lora" or not bundle.manifest.base_bundle:
        raise BundleError(f"{bundle.name} is not a LoRA bundle")
    folder = bundle.path.parent / bundle.manifest.base_bundle
    if not folder.is_dir():
        raise BundleError(f"LoRA bundle {bundle.name!r} needs its base bundle "
                          f"{bundle.manifest.base_bundle!r} next to it ({folder} is missing).")
    return load_bundle(folder)


def adapter_structure(bundle: Bundle) -> tuple:
    """Adapters with the same structure can share one host."""
    cfg = read_adapter_config(bundle.path)
    return (cfg["r"], float(cfg["alpha"]), tuple(cfg["target_modules"]), cfg["num_classes"])


def build_lora_host(base: Bundle, lora: Bundle) -> RETFoundLoRA:
    """Base model + LoRA layers, with `lora`'s adapter loaded and checked."""
    vit = build_bundle_model(base)
    cfg = read_adapter_config(lora.path)
    host = RETFoundLoRA.from_model(vit, cfg["num_classes"], cfg["r"], cfg["alpha"],
                                   cfg["dropout"], cfg["head_dropout"], cfg["target_modules"])
    read_weights(lora)  # sha256 check against the manifest before any tensor is used
    host.load_lora_adapters(lora.path)
    host.active_adapter = lora.key
    return host.eval()


def read_adapter_state(lora: Bundle, host: RETFoundLoRA | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors (sha256-verified), keyed for `host.load_state_dict(strict=False)`."""
    tensors = read_weights(lora)
    if host is not None:
        host.check_adapter_config(read_adapter_config(lora.path))
        expected = set(host.lora_state_dict())
        if set(tensors) != expected:
            raise BundleError(f"{lora.weights_path}: adapter tensors do not fit the loaded base "
                              f"(missing {sorted(expected - set(tensors))}, unexpected "
                              f"{sorted(set(tensors) - expected)}).")
    return {HOST_PREFIX + k: v for k, v in tensors.items()}


def save_lora_bundle(out_dir: str | os.PathLike, host: RETFoundLoRA, manifest: Manifest,
                     model_card: str | None = None) -> Bundle:
    """Write adapter_model.safetensors + adapter_config.json, then manifest and card."""
    folder = host.save_lora_adapters(out_dir)
    manifest = dataclasses.replace(manifest, weights=WeightsSpec(ADAPTER_WEIGHTS, ""))
    return finalize_bundle(folder, manifest, model_card)


def build_lora_model(lora: Bundle) -> RETFoundLoRA:
    """A stand-alone (uncached) model for one LoRA bundle."""
    return build_lora_host(base_of(lora), lora)
