"""Tiny bundles and fundus-like pictures built inside tests (no network, no shipped weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.archs.registry import build_model
from core.bundle import Bundle, save_bundle
from core.manifest import (
    ArchitectureSpec,
    CalibrationSpec,
    ExplanationSpec,
    Manifest,
    Provenance,
    WeightsSpec,
)
from core.preprocessing import PreprocessSpec

TINY_CNN = ArchitectureSpec("timm_classifier", {"model_name": "resnet10t", "num_classes": 5,
                                                "dropout_rate": 0.0})
TINY_VIT = ArchitectureSpec("retfound_vit", {"num_classes": 5, "global_pool": "avg", "img_size": 64,
                                             "patch_size": 16, "embed_dim": 64, "depth": 2,
                                             "num_heads": 4})


def tiny_manifest(name: str = "tiny", arch: ArchitectureSpec = TINY_CNN, **over) -> Manifest:
    vit = arch.builder == "retfound_vit"
    fields = dict(
        name=name, version="0.1", tier="retfound" if vit else "baseline",
        created="2026-11-25T00:00:00Z", architecture=arch,
        preprocessing=PreprocessSpec(input_size=64),
        explanation=ExplanationSpec("blocks.1.norm1" if vit else "backbone.layer4",
                                    arch="vit" if vit else "cnn"),
        weights=WeightsSpec("weights.safetensors", ""), provenance=Provenance("unit test"),
        demo=True, calibration=CalibrationSpec())
    fields.update(over)
    return Manifest(**fields)


def make_tiny_bundle(folder: Path, name: str = "tiny", arch: ArchitectureSpec = TINY_CNN,
                     seed: int = 0, *, dme: bool = False, **over) -> Bundle:
    """dme=True: a DME head (a 6th logit), outputs listing "dme" and dme_threshold 0.5."""
    import dataclasses

    import torch

    if dme:
        arch = ArchitectureSpec(arch.builder, {**arch.kwargs, "dme_head": True})
        over.setdefault("outputs", ("icdr_grade", "dme"))
        over["calibration"] = dataclasses.replace(over.get("calibration", CalibrationSpec()),
                                                  dme_threshold=0.5)
    torch.manual_seed(seed)
    model = build_model(arch.builder, arch.kwargs).eval()
    return save_bundle(folder / name, tiny_manifest(name, arch, **over), model.state_dict())


def fundus_like(seed: int = 0, size: int = 256) -> np.ndarray:
    """A vignetted orange-red disc on black with a bright disc and dark vessels: enough for
    the field finder and the quality gate to accept it as a fundus photo."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, r = w / 2, h / 2, 0.45 * size
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    inside = d <= 1
    vignette = np.clip(1.0 - 0.45 * d**2, 0, 1)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 200 * vignette
    img[..., 1] = 90 * vignette
    img[..., 2] = 40 * vignette
    disc = np.sqrt((xx - cx - 0.4 * r) ** 2 + (yy - cy) ** 2) < 0.12 * r
    img[disc] = (250, 220, 150)
    for k in range(6):
        angle = k * np.pi / 3 + rng.uniform(-0.3, 0.3)
        t = np.linspace(0, 0.9 * r, 200)
        x = (cx + 0.4 * r + t * np.cos(angle)).astype(int).clip(0, w - 1)
        y = (cy + t * np.sin(angle)).astype(int).clip(0, h - 1)
        for dx in (-1, 0, 1):
            img[y, (x + dx).clip(0, w - 1)] *= 0.55
    img += rng.normal(0, 6, img.shape)
    img[~inside] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def make_lora_bundles(folder: Path, base: Bundle, names: list[str]) -> list[Bundle]:
    """LoRA bundles over `base`, each with different random adapter and head tensors."""
    import dataclasses

    import torch

    from core.bundle import build_bundle_model
    from core.lora_bundle import save_lora_bundle

    bundles = []
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        host = _lora_host(build_bundle_model(base))
        with torch.no_grad():
            for tensor in host.lora_state_dict().values():
                tensor.add_(torch.randn_like(tensor) * 0.05)
        manifest = dataclasses.replace(base.manifest, name=name, tier="lora",
                                       base_bundle=base.path.name)
        bundles.append(save_lora_bundle(folder / name, host, manifest))
    return bundles


def _lora_host(vit):
    from core.archs.lora import RETFoundLoRA

    return RETFoundLoRA.from_model(vit, 5, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                   head_dropout=0.0)


def decision_fields(prediction) -> dict:
    """Every discrete field of a prediction's decision (grade, flags, urgency, review reasons,
    not-fundus, and any added later, e.g. DME): what must not change between engines."""
    import dataclasses

    d = prediction.decision
    return {f.name: getattr(d, f.name) for f in dataclasses.fields(d)
            if not isinstance(getattr(d, f.name), float)}
