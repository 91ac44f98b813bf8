"""Tier 1, "baseline": a timm CNN (DRClassifier) trained in two stages, served as one module."""

from __future__ import annotations

import torch
from torch import nn

from core.archs.specs import ArchitectureSpec, ExplanationSpec
from core.archs.tier import Tier, TrainableModel, TrainingStart
from core.errors import ConfigError


class BaselineTier(Tier):
    name = "baseline"
    label = "Baseline CNN"
    staged = True  # head only for `freeze_epochs`, then everything
    lr_range = (1e-5, 3e-3)
    dropout_key = "model.dropout_rate"

    def channels_last(self, arch: str) -> bool:
        return arch == "cnn"

    def training_model(self, start: TrainingStart) -> TrainableModel:
        from core.archs.baseline import DRClassifier  # timm: imported when a model is made
        from core.explain import suggest_layer

        m = start.model
        dme = bool(getattr(m, "dme_head", False))
        if start.base is not None:  # model.checkpoint_path: continue from a baseline bundle
            model = DRClassifier(m.name, num_classes=5, pretrained=False,
                                 dropout_rate=m.dropout_rate, dme_head=dme)
            _load_base(model, self._base_weights(start, m.name))
        else:
            model = DRClassifier(m.name, num_classes=5, pretrained=m.pretrained,
                                 dropout_rate=m.dropout_rate, weights_path=m.weights_path,
                                 dme_head=dme)
        kwargs = {"model_name": m.name, "num_classes": 5, "dropout_rate": m.dropout_rate}
        arch = ArchitectureSpec("timm_classifier", kwargs | ({"dme_head": True} if dme else {}))
        layer = suggest_layer(model, "cnn", start.input_size)
        return TrainableModel(model, arch, ExplanationSpec(layer, arch="cnn"),
                              freeze_epochs=start.freeze_epochs)

    @staticmethod
    def _base_weights(start: TrainingStart, model_name: str) -> dict[str, torch.Tensor]:
        """Every tensor of a baseline bundle of the same timm model, head included: a clinic
        fine-tunes a shipped grader on its own photos, or a recipe starts from another run.
        Anything else fails loudly: silently starting from ImageNet while the card says
        "started from bundle X" would be a card that lies."""
        base = start.base
        name = base.manifest.architecture.kwargs.get("model_name")
        if base.manifest.tier != "baseline" or name != model_name:
            raise ConfigError(
                f"model.checkpoint_path {base.path}: a baseline run starts only from a baseline "
                f"bundle of the same timm model ({model_name!r}); this is a "
                f"{base.manifest.tier!r} bundle of {name!r}")
        return start.base_weights()

    def set_epoch(self, model: nn.Module, epoch: int, freeze_epochs: int) -> None:
        """Stage switch: backbone frozen for the first `freeze_epochs` epochs."""
        if freeze_epochs > 0:
            if epoch < freeze_epochs:
                model.freeze_backbone()
            else:
                model.unfreeze_backbone()


BASELINE = BaselineTier()


def _load_base(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor of the base, strictly; only a DME head this run adds may start fresh."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    fresh = [k for k in missing if not k.startswith("dme_head.")]
    if fresh or unexpected:
        raise ConfigError(f"model.checkpoint_path: the base bundle's weights do not fit this "
                          f"model (missing {fresh}, unexpected {list(unexpected)})")
