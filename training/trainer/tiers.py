"""Per-tier setup for the one training loop: model, parameter groups, stages, export.

What differs between tiers is the tier's business (core.archs.tier_*: baseline = DRClassifier
in two stages, retfound = ViT fully fine-tuned, lora = frozen ViT + LoRA exported as adapters
over a base bundle); this module asks the registered tier and adds what is the same for all:
RETFound's layer-wise lr decay wherever the model is a ViT, and no weight decay on biases,
norms and position tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.archs.specs import ArchitectureSpec, ExplanationSpec
from core.archs.tier import Tier, TrainingStart
from core.archs.tiers import get_tier
from core.bundle import Bundle, build_bundle_model, load_bundle, read_weights, save_model_bundle
from core.manifest import Manifest
from training.trainer.config import TrainConfig

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

    @property
    def kind(self) -> Tier:
        """The registered tier (core.archs.tiers) this setup trains."""
        return get_tier(self.tier)

    @property
    def channels_last(self) -> bool:
        """NHWC on CUDA, as the tier decides for this model's architecture."""
        return self.kind.channels_last(self.explanation.arch)

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float, *,
                     head_lr_scale: float = 1.0) -> list[dict]:
        """AdamW groups: ViT layers scaled by layer_decay ** (distance from the top), the
        classifier head (parameters named `head.*`) by head_lr_scale."""
        prefix = self.kind.layer_prefix
        vit = _vit_of(self.model, prefix)
        keep_frozen = self.kind.staged
        depth = len(vit.blocks) if vit is not None else 0

        def scale_of(name: str) -> float:
            if _is_head(name):
                return head_lr_scale
            if vit is None:
                return 1.0
            return layer_decay ** (depth + 1 - _layer_id(name[len(prefix):], depth))

        return _groups(self.model, lr, weight_decay, scale_of, keep_frozen)

    def set_epoch(self, epoch: int) -> None:
        """Stage switches (baseline: backbone frozen for the first `freeze_epochs` epochs)."""
        self.kind.set_epoch(self.model, epoch, self.freeze_epochs)

    def export(self, out_dir: Path, manifest: Manifest, card: str) -> Bundle:
        return save_model_bundle(out_dir, manifest, self.model, card)


def build_setup(cfg: TrainConfig) -> TierSetup:
    tier = get_tier(cfg.model.tier)
    built = tier.training_model(training_start(cfg))
    return TierSetup(tier.name, built.model, built.architecture, built.explanation,
                     base_bundle=built.base_bundle, freeze_epochs=built.freeze_epochs,
                     license=built.license)


def training_start(cfg: TrainConfig) -> TrainingStart:
    """The config, and the bundle `model.checkpoint_path` names when it is a bundle folder."""
    m = cfg.model
    start = TrainingStart(m, cfg.preprocessing.input_size, cfg.optim.freeze_epochs)
    if not (m.checkpoint_path and Path(m.checkpoint_path).is_dir()):
        return start
    base = load_bundle(m.checkpoint_path)
    return TrainingStart(m, cfg.preprocessing.input_size, cfg.optim.freeze_epochs, base=base,
                         base_model=lambda: build_bundle_model(base),
                         base_weights=lambda: read_weights(base))


def _vit_of(model: nn.Module, prefix: str) -> nn.Module | None:
    """The ViT inside the model (at `prefix`), or None when it is not one."""
    inner = model.get_submodule(prefix.rstrip(".")) if prefix else model
    return inner if hasattr(inner, "blocks") and hasattr(inner, "patch_embed") else None


def _layer_id(name: str, depth: int) -> int:
    """RETFound's layer ids: 0 = patch_embed/cls/pos, block i = i+1, everything after = depth+1."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


HEAD_MODULE_NAMES = ("head", "classifier")  # where timm and the tiers keep the grade head


def _is_head(name: str) -> bool:
    """The classifier head's parameters: `head.weight`, `classifier.bias`, `x.head.fc.weight`."""
    return any(p in HEAD_MODULE_NAMES for p in name.split(".")[:-1])


def _groups(model: nn.Module, lr: float, weight_decay: float, scale_of,
            keep_frozen: bool) -> list[dict]:
    """One group per (lr scale, decay?) pair; no decay for biases, norms and position tokens.
    Frozen parameters are left out unless the tier unfreezes them later (`keep_frozen`)."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad and not keep_frozen:
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
