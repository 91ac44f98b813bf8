"""Tier 2, "retfound": the RETFound ViT fully fine-tuned (layer-wise lr decay, drop path).

Also home of what the LoRA tier shares with it: where its ViT comes from when training (a
bundle folder, a RETFound .pth, or random for demos) and its default explanation layer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.archs.specs import ArchitectureSpec, ExplanationSpec
from core.archs.tier import Tier, TrainableModel, TrainingStart
from core.errors import ConfigError
from core.wording import RETFOUND_LICENSE_NOTICE

DERIVED_LICENSE = "CC BY-NC 4.0 (derived from RETFound weights)"


class RetfoundTier(Tier):
    name = "retfound"
    label = "RETFound"
    int8 = True  # ViT-L on the CPU: int8 GEMMs about halve the grade's latency
    licence_notice = RETFOUND_LICENSE_NOTICE
    dropout_key = "model.drop_path_rate"

    def training_model(self, start: TrainingStart) -> TrainableModel:
        from core.archs.retfound import retfound_builder_kwargs

        vit = training_vit(start, reuse_base=False)
        kwargs = retfound_builder_kwargs(vit) | {"drop_path_rate": 0.0}
        return TrainableModel(vit, ArchitectureSpec("retfound_vit", kwargs), vit_explanation(vit),
                              license=started_from_license(start))


def started_from_license(start: TrainingStart) -> str | None:
    """A base bundle passes its own licence on (None for an encoder pretrained here); a .pth
    is taken to be RETFound's."""
    if start.base is not None:
        return start.base.manifest.license
    return DERIVED_LICENSE if start.model.checkpoint_path else None


def vit_explanation(vit: nn.Module) -> ExplanationSpec:
    """RETFOUND.md's default: the last block's first norm."""
    return ExplanationSpec(f"blocks.{len(vit.blocks) - 1}.norm1", arch="vit")


def training_vit(start: TrainingStart, *, reuse_base: bool) -> nn.Module:
    """From a bundle folder (its model as is, or its encoder under a fresh head), a RETFound
    .pth, or random (demo)."""
    from core.archs.retfound import build_retfound_vit, load_retfound_model

    m = start.model
    size = start.input_size
    if start.base is not None:
        if start.base.manifest.architecture.builder != "retfound_vit":
            raise ConfigError(f"{m.checkpoint_path} is not a RETFound-layout bundle")
        vit = start.base_model() if reuse_base else _vit_from_bundle(start)
    elif m.checkpoint_path:
        vit = load_retfound_model(m.checkpoint_path, num_classes=5, global_pool=m.global_pool,
                                  img_size=size, drop_path_rate=m.drop_path_rate)
    else:
        kwargs: dict[str, Any] = {"img_size": size, "global_pool": m.global_pool} | dict(m.vit)
        vit = build_retfound_vit(num_classes=5, drop_path_rate=m.drop_path_rate, **kwargs)
    if m.grad_checkpointing:
        vit.set_grad_checkpointing(True)
    return vit


def _vit_from_bundle(start: TrainingStart) -> nn.Module:
    """Full fine-tuning starts from a bundle's encoder; the head is re-initialised if absent."""
    from core.archs.retfound import build_retfound_vit, init_retfound_head

    base = start.base
    kwargs = dict(base.manifest.architecture.kwargs) | {
        "num_classes": 5, "drop_path_rate": start.model.drop_path_rate}
    vit = build_retfound_vit(**kwargs)
    state = {k: v for k, v in start.base_weights().items() if not k.startswith("head.")}
    result = vit.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if not k.startswith("head.")] + result.unexpected_keys
    if bad:
        raise ConfigError(f"{base.path}: encoder weights do not fit: {bad}")
    init_retfound_head(vit)
    return vit


RETFOUND = RetfoundTier()
