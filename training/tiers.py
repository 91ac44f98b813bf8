"""Per-tier setup for the one training loop: model, parameter groups, stages, export.

baseline: DRClassifier, two stages (head only for `freeze_epochs`, then everything).
retfound: ViT fully fine-tuned with layer-wise lr decay (0.65) and drop path.
lora:     frozen ViT + LoRA on the target modules + head; exported as adapters over a base bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.archs.baseline import DRClassifier
from core.archs.lora import RETFoundLoRA
from core.archs.retfound import (
    build_retfound_vit,
    init_retfound_head,
    load_retfound_model,
    retfound_builder_kwargs,
)
from core.bundle import Bundle, build_bundle_model, load_bundle, read_weights, save_bundle
from core.errors import ConfigError
from core.explain import suggest_layer
from core.lora_bundle import save_lora_bundle
from core.manifest import ArchitectureSpec, ExplanationSpec, Manifest
from training.config import TrainConfig

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token")


@dataclass
class TierSetup:
    """What the loop needs from a tier."""

    tier: str
    model: nn.Module
    architecture: ArchitectureSpec
    explanation: ExplanationSpec
    base_bundle: Bundle | None = None  # LoRA: the base the adapters are exported over
    freeze_epochs: int = 0
    license: str | None = None

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
        vit = _vit_of(self.model)
        if vit is None:
            return _groups(self.model, lr, weight_decay, lambda name: 1.0)
        depth = len(vit.blocks)
        prefix = "vit." if isinstance(self.model, RETFoundLoRA) else ""
        return _groups(self.model, lr, weight_decay,
                       lambda name: layer_decay ** (depth + 1 - _layer_id(name[len(prefix):], depth)))

    def set_epoch(self, epoch: int) -> None:
        """Baseline stage switch: backbone frozen for the first `freeze_epochs` epochs."""
        if isinstance(self.model, DRClassifier) and self.freeze_epochs > 0:
            if epoch < self.freeze_epochs:
                self.model.freeze_backbone()
            else:
                self.model.unfreeze_backbone()

    def export(self, out_dir: Path, manifest: Manifest, card: str) -> Bundle:
        if isinstance(self.model, RETFoundLoRA):
            return save_lora_bundle(out_dir, self.model, manifest, card)
        return save_bundle(out_dir, manifest, self.model.state_dict(), card)


def build_setup(cfg: TrainConfig) -> TierSetup:
    m = cfg.model
    if m.tier == "baseline":
        model = DRClassifier(m.name, num_classes=5, pretrained=m.pretrained,
                             dropout_rate=m.dropout_rate, weights_path=m.weights_path)
        arch = ArchitectureSpec("timm_classifier", {"model_name": m.name, "num_classes": 5,
                                                    "dropout_rate": m.dropout_rate})
        return TierSetup("baseline", model, arch,
                         ExplanationSpec(suggest_layer(model, "cnn", cfg.preprocessing.input_size),
                                         arch="cnn"),
                         freeze_epochs=cfg.optim.freeze_epochs)
    vit, base = _load_vit(cfg)
    if m.grad_checkpointing:
        vit.set_grad_checkpointing(True)
    layer = f"blocks.{len(vit.blocks) - 1}.norm1"
    explanation = ExplanationSpec(layer, arch="vit")
    if m.tier == "retfound":
        kwargs = retfound_builder_kwargs(vit) | {"drop_path_rate": 0.0}
        return TierSetup("retfound", vit, ArchitectureSpec("retfound_vit", kwargs), explanation,
                         license=_license(m.checkpoint_path))
    if base is None:
        raise ConfigError("LoRA training needs model.checkpoint_path = a base bundle folder "
                          "(import a RETFound .pth first with python -m training.import_retfound)")
    model = RETFoundLoRA.from_model(vit, 5, m.lora_r, m.lora_alpha, m.lora_dropout,
                                    m.head_dropout, m.target_modules)
    return TierSetup("lora", model, base.manifest.architecture, explanation, base_bundle=base,
                     license=base.manifest.license)


def _load_vit(cfg: TrainConfig) -> tuple[nn.Module, Bundle | None]:
    """From a bundle folder (encoder or fine-tuned), a RETFound .pth, or random (demo)."""
    m = cfg.model
    size = cfg.preprocessing.input_size
    if m.checkpoint_path and Path(m.checkpoint_path).is_dir():
        base = load_bundle(m.checkpoint_path)
        if base.manifest.architecture.builder != "retfound_vit":
            raise ConfigError(f"{m.checkpoint_path} is not a RETFound-layout bundle")
        if m.tier == "lora":
            vit = build_bundle_model(base)
        else:
            vit = _vit_from_bundle(base, m.drop_path_rate)
        return vit, base
    if m.checkpoint_path:
        return load_retfound_model(m.checkpoint_path, num_classes=5, global_pool=m.global_pool,
                                   img_size=size, drop_path_rate=m.drop_path_rate), None
    kwargs: dict[str, Any] = {"img_size": size, "global_pool": m.global_pool} | dict(m.vit)
    return build_retfound_vit(num_classes=5, drop_path_rate=m.drop_path_rate, **kwargs), None


def _vit_from_bundle(base: Bundle, drop_path_rate: float) -> nn.Module:
    """Full fine-tuning starts from a bundle's encoder; the head is re-initialised if absent."""
    kwargs = dict(base.manifest.architecture.kwargs) | {"num_classes": 5,
                                                        "drop_path_rate": drop_path_rate}
    vit = build_retfound_vit(**kwargs)
    state = {k: v for k, v in read_weights(base).items() if not k.startswith("head.")}
    result = vit.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if not k.startswith("head.")] + result.unexpected_keys
    if bad:
        raise ConfigError(f"{base.path}: encoder weights do not fit: {bad}")
    init_retfound_head(vit)
    return vit


def _license(checkpoint: str | None) -> str | None:
    return "CC BY-NC 4.0 (derived from RETFound weights)" if checkpoint else None


def _vit_of(model: nn.Module) -> nn.Module | None:
    if isinstance(model, RETFoundLoRA):
        return model.vit
    return model if hasattr(model, "blocks") and hasattr(model, "patch_embed") else None


def _layer_id(name: str, depth: int) -> int:
    """RETFound's layer ids: 0 = patch_embed/cls/pos, block i = i+1, everything after = depth+1."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _groups(model: nn.Module, lr: float, weight_decay: float, scale_of) -> list[dict]:
    """One group per (lr scale, decay?) pair; no decay for biases, norms and position tokens."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad and not isinstance(model, DRClassifier):
            continue  # frozen for the whole run (LoRA base)
        no_decay = param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        scale = scale_of(name)
        key = (scale, no_decay)
        group = groups.setdefault(key, {"params": [], "lr_scale": scale, "lr": lr * scale,
                                        "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
    return list(groups.values())


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_device(setup: TierSetup, device: torch.device, channels_last: bool) -> None:
    setup.model.to(device)
    if channels_last:
        setup.model.to(memory_format=torch.channels_last)
