"""Tier 3, "lora": a frozen RETFound base bundle + LoRA adapters and head stored apart.

A bundle of this tier names `base_bundle` (a sibling folder) and holds only the adapter
(`adapter_model.safetensors` + `adapter_config.json`, a few MB). The model cache builds one
"host" per base and adapter structure and swaps each bundle's adapter tensors into it, so
three adapters over ViT-L cost one ViT-L. Exported to ONNX merged into a plain ViT.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.archs.tier import DEFAULT_SEARCH, Tier, TrainableModel, TrainingStart
from core.archs.tier_retfound import training_vit, vit_explanation
from core.errors import BundleError, ConfigError
from core.wording import RETFOUND_LICENSE_NOTICE

HOST_PREFIX = "vit."  # RETFoundLoRA keeps the timm model at .vit


class LoraTier(Tier):
    name = "lora"
    label = "RETFound + LoRA"
    needs_base = True
    layer_prefix = HOST_PREFIX
    licence_notice = RETFOUND_LICENSE_NOTICE
    search = (*DEFAULT_SEARCH, "lora_r", "lora_alpha")
    dropout_key = "model.head_dropout"

    def build_over(self, base_model: nn.Module, folder: Path) -> nn.Module:
        from core.archs.lora import RETFoundLoRA

        return RETFoundLoRA.from_adapters(base_model, folder)

    def share_key(self, folder: Path) -> tuple:
        """Adapters with the same structure can share one host."""
        from core.archs.lora import read_adapter_config

        cfg = read_adapter_config(folder)
        return (cfg["r"], float(cfg["alpha"]), tuple(cfg["target_modules"]), cfg["num_classes"])

    def adapter_state(self, folder: Path, state: dict[str, torch.Tensor],
                      host: nn.Module) -> dict[str, torch.Tensor]:
        from core.archs.lora import ADAPTER_WEIGHTS, read_adapter_config

        host.check_adapter_config(read_adapter_config(folder))
        expected = set(host.lora_state_dict())
        if set(state) != expected:
            raise BundleError(f"{folder / ADAPTER_WEIGHTS}: adapter tensors do not fit the loaded "
                              f"base (missing {sorted(expected - set(state))}, unexpected "
                              f"{sorted(set(state) - expected)}).")
        return {HOST_PREFIX + k: v for k, v in state.items()}

    def write_weights(self, folder: Path, model: nn.Module, file: str) -> str:
        """adapter_model.safetensors + adapter_config.json; the base stays in its own bundle."""
        from core.archs.lora import ADAPTER_WEIGHTS

        _as_lora(model).save_lora_adapters(folder)
        return ADAPTER_WEIGHTS

    def exportable(self, model: nn.Module) -> nn.Module:
        """LoRA folded into the weights: the ONNX graph has no adapter branches."""
        return _as_lora(model).merge_and_unload()

    def training_model(self, start: TrainingStart) -> TrainableModel:
        from core.archs.lora import RETFoundLoRA

        if start.base is None:
            raise ConfigError("LoRA training needs model.checkpoint_path = a base bundle folder "
                              "(import a RETFound .pth first with python -m "
                              "training.interchange.import_retfound)")
        m = start.model
        vit = training_vit(start, reuse_base=True)
        explanation = vit_explanation(vit)  # the base's layer names (explain_layer adds .vit)
        model = RETFoundLoRA.from_model(vit, 5, m.lora_r, m.lora_alpha, m.lora_dropout,
                                        m.head_dropout, m.target_modules)
        return TrainableModel(model, start.base.manifest.architecture, explanation,
                              base_bundle=start.base, license=start.base.manifest.license)


def _as_lora(model: nn.Module):
    from core.archs.lora import RETFoundLoRA

    if not isinstance(model, RETFoundLoRA):
        raise BundleError(f"a 'lora' bundle did not build a RETFoundLoRA model "
                          f"({type(model).__name__})")
    return model


LORA = LoraTier()
