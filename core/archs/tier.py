"""The Tier interface: all the project knows about one model tier, in one object.

Why: the predictor, the model cache, bundle loading, training and export used to compare
`manifest.tier` with names ("lora", "baseline") in about sixteen places, so a new tier meant
editing six files. Now they ask the tier. A tier subclasses `Tier`, overrides what differs from
a plain "one weights file, one module" model, and is registered by name
(core.archs.tiers.register_tier). The defaults are that plain model.

Tiers sit below core.bundle and core.manifest (both ask the registry), so they receive what
they need from those layers as arguments (verified tensors, a base model, a folder) instead of
importing them; training hands them a `TrainingStart` the same way (core never imports
training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.archs.registry import build_model
from core.archs.specs import ArchitectureSpec, ExplanationSpec
from core.errors import ConfigError
from core.weights import load_state_dict_exact, write_tensors

DEFAULT_SEARCH = ("lr", "batch_size", "dropout")


@dataclass(frozen=True)
class TrainingStart:
    """What training hands a tier to build a model to train (duck-typed: core never imports
    training). `base` is the bundle that `model.checkpoint_path` names when it is a bundle
    folder; `base_model` / `base_weights` load its verified model / tensors on demand."""

    model: Any  # training.trainer.config.ModelConfig
    input_size: int
    freeze_epochs: int = 0
    base: Any | None = None  # core.bundle.Bundle
    base_model: Callable[[], nn.Module] | None = None
    base_weights: Callable[[], dict[str, torch.Tensor]] | None = None


@dataclass
class TrainableModel:
    """A tier's model ready to train, and what its bundle's manifest will say about it."""

    model: nn.Module
    architecture: ArchitectureSpec
    explanation: ExplanationSpec
    base_bundle: Any | None = None  # core.bundle.Bundle the weights are exported over
    freeze_epochs: int = 0
    license: str | None = None


class Tier:
    """One tier. Class attributes describe it; methods build, save, share and export it."""

    name: str = ""
    label: str = ""  # what the dashboard calls it
    needs_base: bool = False  # weights = a base bundle (manifest.base_bundle) + this bundle's parts
    int8: bool = False  # CPU dynamic int8 grading applies (core.quantize)
    layer_prefix: str = ""  # where the base's layer names sit inside the served module
    staged: bool = False  # trains in stages: frozen parameters are unfrozen later
    licence_notice: str | None = None  # shown wherever its bundles are listed
    search: tuple[str, ...] = DEFAULT_SEARCH  # hyper-parameters training.tuning.hpo may search
    lr_range: tuple[float, float] = (1e-5, 1e-3)  # training.tuning.hpo's log-uniform lr range
    dropout_key: str = "model.dropout_rate"  # the config key training.tuning.hpo's "dropout" sets

    # -- memory format and explanations -------------------------------------------------------
    def channels_last(self, arch: str) -> bool:
        """NHWC on CUDA, in training and serving (pays for CNNs only)."""
        return False

    def explain_layer(self, layer: str) -> str:
        """The manifest's (base) layer name as a module name of the served model."""
        prefix = self.layer_prefix
        return layer if not prefix or layer.startswith(prefix) else prefix + layer

    # -- building a served model ---------------------------------------------------------------
    def new_module(self, architecture: ArchitectureSpec) -> nn.Module:
        """The architecture with random weights (core.archs.registry's builders by default)."""
        return build_model(architecture.builder, architecture.kwargs)

    def build(self, architecture: ArchitectureSpec, state: dict[str, torch.Tensor],
              source: str) -> nn.Module:
        """The module with verified `state` loaded exactly, in eval mode.

        Built on the meta device first: it skips the random initialisation the weights
        overwrite anyway (ViT-L: ~9 s on 2 cores); a buffer outside the state dict: for real.
        """
        module = self._new_on_meta(architecture)
        if module is not None:
            load_state_dict_exact(module, state, source, assign=True)
            if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
                return module.eval()
        module = self.new_module(architecture)
        load_state_dict_exact(module, state, source)
        return module.eval()

    def _new_on_meta(self, architecture: ArchitectureSpec) -> nn.Module | None:
        try:
            with torch.device("meta"):
                return self.new_module(architecture)
        except (RuntimeError, NotImplementedError, TypeError):
            return None

    def build_over(self, base_model: nn.Module, folder: Path) -> nn.Module:
        """needs_base tiers: the base bundle's model with this bundle's parts (in `folder`)."""
        raise ConfigError(f"tier {self.name!r} does not build over a base bundle")

    # -- sharing in the model cache ------------------------------------------------------------
    def share_key(self, folder: Path) -> tuple:
        """needs_base tiers: bundles over one base with equal keys share one loaded host."""
        return ()

    def adapter_state(self, folder: Path, state: dict[str, torch.Tensor],
                      host: nn.Module) -> dict[str, torch.Tensor]:
        """needs_base tiers: a bundle's verified tensors keyed for
        `host.load_state_dict(strict=False)`, checked against the host."""
        raise ConfigError(f"tier {self.name!r} has no adapter to swap into a shared host")

    # -- saving and exporting ------------------------------------------------------------------
    def write_weights(self, folder: Path, model: nn.Module, file: str) -> str:
        """Write the model's weights into `folder`; return the file the manifest names."""
        write_tensors(folder / file, model.state_dict())
        return file

    def exportable(self, model: nn.Module) -> nn.Module:
        """The plain module an ONNX graph is made of."""
        return model

    # -- training ------------------------------------------------------------------------------
    def training_model(self, start: TrainingStart) -> TrainableModel:
        raise ConfigError(f"tier {self.name!r} cannot be trained with the project's trainers")

    def set_epoch(self, model: nn.Module, epoch: int, freeze_epochs: int) -> None:
        """Called before each training epoch (stage switches)."""

