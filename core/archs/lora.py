"""Hand-written LoRA for timm ViTs (no peft), and the RETFound + LoRA tier.

Why not peft: it imports transformers and renames every key (``base_model.model.``), which
breaks RETFound checkpoints and the layer-decay grouping. ``LoRALinear`` subclasses
``nn.Linear`` and keeps ``weight``/``bias``, so ``blocks.N.attn.qkv.weight`` stays where it was
and only ``lora_A``/``lora_B`` are added beside it.

Adapters are saved as peft's file names (``adapter_model.safetensors`` + ``adapter_config.json``)
but with our own keys (timm names, e.g. ``blocks.0.attn.qkv.lora_A``). Nothing here holds global
state or locks: one ``RETFoundLoRA`` can swap adapters with ``load_lora_adapters``, and the caller
(the inference cache) must not swap while another thread runs a forward on the same model.

RETFound weights are CC BY-NC 4.0 (see ``core.archs.retfound``); adapters trained on them too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.archs.retfound import init_retfound_head, load_retfound_model, retfound_builder_kwargs
from core.errors import BundleError, ConfigError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoRALinear",
    "RETFoundLoRA",
    "apply_lora",
    "read_adapter_config",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_FORMAT = "dr-screening-lora/1"
# Base-model fields that decide whether an adapter fits (drop path and head size do not).
_STRUCTURAL = (
    "embed_dim", "depth", "num_heads", "patch_size", "img_size", "global_pool", "mlp", "mlp_ratio",
)


def _check_lora_args(r: int, alpha: float, dropout: float) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"LoRA rank r={r!r} must be a positive integer (e.g. 8).")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"LoRA alpha={alpha!r} must be a positive number (e.g. 32).")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout={dropout!r} must be in [0, 1).")


class LoRALinear(nn.Linear):
    """``y = x W^T + b + (alpha/r) dropout(x) A^T B^T``; B starts at zero, so y starts unchanged."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, r: int = 8,
        alpha: float = 32.0, dropout: float = 0.0, device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._add_lora(r, alpha, dropout)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, r: int = 8, alpha: float = 32.0, dropout: float = 0.0
    ) -> LoRALinear:
        """Wrap ``linear`` sharing its weight and bias tensors (no copy of the base weights)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.register_parameter("bias", linear.bias)
        new._add_lora(r, alpha, dropout)
        new.train(linear.training)
        return new

    def _add_lora(self, r: int, alpha: float, dropout: float) -> None:
        _check_lora_args(r, alpha, dropout)
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        kw = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return out + update * self.scaling

    def delta_weight(self) -> Tensor:
        """``scaling * B @ A``, the update LoRA adds to ``weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (in place) and switch the branch off."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge`` (up to rounding) and switch the branch back on."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with merged weights; ``self`` is left untouched."""
        kw = {"device": self.weight.device, "dtype": self.weight.dtype}
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, **kw)
        delta = torch.zeros_like(self.weight) if self.merged else self.delta_weight()
        linear.weight.copy_(self.weight + delta.to(self.weight.dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def apply_lora(
    model: nn.Module, r: int = 8, alpha: float = 32, dropout: float = 0.1,
    target_modules: Sequence[str] = ("qkv",),
) -> nn.Module:
    """Swap every ``nn.Linear`` whose last name part is in ``target_modules`` for a LoRALinear.

    Then freeze all but the LoRA tensors, ``head`` and the final norm (``fc_norm`` or ``norm``,
    whichever has weights). Modifies ``model`` in place and returns it.
    """
    targets = _check_targets(target_modules)
    _check_lora_args(r, alpha, dropout)
    replaced = 0
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] not in targets or not isinstance(module, nn.Linear):
            continue
        if isinstance(module, LoRALinear):
            raise ConfigError(f"{name} already carries LoRA; apply_lora once per model.")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear.from_linear(module, r, alpha, dropout))
        replaced += 1
    if replaced == 0:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                               if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"target_modules={list(targets)} matched no nn.Linear; Linear names here: "
            f"{linear_names}."
        )
    for pname, param in model.named_parameters():
        param.requires_grad = pname.rsplit(".", 1)[-1].startswith("lora_")
    for attr in _trainable_attrs(model):
        getattr(model, attr).requires_grad_(True)
    return model


def _check_targets(target_modules: Sequence[str]) -> tuple[str, ...]:
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not targets or not all(isinstance(t, str) and t and "." not in t for t in targets):
        raise ConfigError(
            f"target_modules={target_modules!r} must be module name parts such as ('qkv',) or "
            "('qkv', 'proj')."
        )
    return targets


def _trainable_attrs(model: nn.Module) -> list[str]:
    """``head`` plus the final norm that has weights (``fc_norm`` in avg mode, else ``norm``)."""
    attrs = ["head"] if isinstance(getattr(model, "head", None), nn.Module) else []
    for attr in ("fc_norm", "norm"):
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return attrs + [attr]
    return attrs


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter folder."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path} is missing; save adapters with save_lora_adapters().") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the adapter.") from exc
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise BundleError(f"{path} is not a {_FORMAT} adapter config; re-export the adapter.")
    return config


class RETFoundLoRA(nn.Module):
    """RETFound ViT with a frozen encoder, trainable LoRA (qkv by default) and head.

    The timm model is ``self.vit`` (keys unchanged, so layer-decay grouping works on it).
    """

    def __init__(
        self, checkpoint_path: str | Path | None, num_classes: int = 5, lora_r: int = 8,
        lora_alpha: float = 32, lora_dropout: float = 0.1, head_dropout: float = 0.3,
        target_modules: Sequence[str] = ("qkv",), global_pool: bool | str = "avg",
        img_size: int = 224,
        *, vit: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"head_dropout={head_dropout!r} must be in [0, 1).")
        if vit is None:
            if checkpoint_path is None:
                raise ConfigError(
                    "Give a RETFound checkpoint_path, or use RETFoundLoRA.from_model(vit)."
                )
            vit = load_retfound_model(checkpoint_path, num_classes, global_pool, img_size)
        elif getattr(vit, "num_classes", None) != num_classes:
            vit.reset_classifier(num_classes)
            init_retfound_head(vit)
        vit.head_drop = nn.Dropout(head_dropout)
        self.vit = apply_lora(vit, lora_r, lora_alpha, lora_dropout, target_modules)
        self.config: dict[str, Any] = {
            "r": lora_r, "alpha": float(lora_alpha), "dropout": float(lora_dropout),
            "target_modules": list(_check_targets(target_modules)), "num_classes": num_classes,
            "head_dropout": float(head_dropout),
        }
        self.checkpoint_name = Path(checkpoint_path).name if checkpoint_path else None

    @classmethod
    def from_model(
        cls, vit: nn.Module, num_classes: int, lora_r: int = 8, lora_alpha: float = 32,
        lora_dropout: float = 0.1, head_dropout: float = 0.3,
        target_modules: Sequence[str] = ("qkv",),
    ) -> RETFoundLoRA:
        """Wrap a built timm ViT (modified in place). Its head is kept if it has ``num_classes``
        outputs, else replaced by a fresh RETFound-initialised head."""
        return cls(None, num_classes, lora_r, lora_alpha, lora_dropout, head_dropout,
                   target_modules, vit=vit)

    @classmethod
    def from_adapters(cls, vit: nn.Module, adapter_dir: str | Path) -> RETFoundLoRA:
        """Wrap ``vit`` with the settings an adapter folder was trained with, then load it."""
        cfg = read_adapter_config(adapter_dir)
        model = cls.from_model(vit, cfg["num_classes"], cfg["r"], cfg["alpha"], cfg["dropout"],
                               cfg["head_dropout"], cfg["target_modules"])
        model.load_lora_adapters(adapter_dir)
        return model

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)

    def _lora_modules(self) -> list[LoRALinear]:
        return [m for m in self.vit.modules() if isinstance(m, LoRALinear)]

    def print_trainable_parameters(self) -> tuple[int, int, float]:
        """Print and return (trainable, total, trainable %), counted from ``requires_grad``."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in self._lora_modules())
        pct = 100.0 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {pct:.4f} "
              f"(LoRA {lora:,}, head and norm {trainable - lora:,})")
        return trainable, total, pct

    def lora_state_dict(self) -> dict[str, Tensor]:
        """LoRA A/B tensors plus head and trainable norm, keyed by timm names."""
        keep = tuple(f"{a}." for a in _trainable_attrs(self.vit))
        return {
            name: tensor.detach()
            for name, tensor in self.vit.state_dict(keep_vars=True).items()
            if name.startswith(keep) or name.rsplit(".", 1)[-1].startswith("lora_")
        }

    def _base_description(self) -> dict[str, Any]:
        return {
            "builder": "retfound_vit",
            "kwargs": retfound_builder_kwargs(self.vit),
            "checkpoint": self.checkpoint_name,
            "fingerprint": _fingerprint(self.vit),
            "description": "RETFound ViT encoder, frozen (weights CC BY-NC 4.0, non-commercial).",
        }

    def save_lora_adapters(self, adapter_dir: str | Path) -> Path:
        """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (3.2 MB for ViT-L r=8)."""
        from safetensors.torch import save_file

        out = Path(adapter_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.cpu().contiguous().clone() for k, v in self.lora_state_dict().items()}
        save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = {"format": _FORMAT, **self.config, "base_model": self._base_description()}
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out

    def load_lora_adapters(self, adapter_dir: str | Path) -> None:
        """Replace this model's LoRA, head and norm tensors with a saved adapter's (strict).

        r, alpha, target_modules, num_classes and the base structure must match (ConfigError
        naming the field); dropout and head_dropout are taken from the adapter.
        """
        from safetensors.torch import load_file

        cfg = read_adapter_config(adapter_dir)
        self.check_adapter_config(cfg)
        path = Path(adapter_dir) / ADAPTER_WEIGHTS
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # missing file or safetensors' own error types
            raise BundleError(f"{path} cannot be read ({exc}); re-export the adapter.") from exc
        own = self.lora_state_dict()
        _check_tensors(own, tensors, path)
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(tensors[name])
        self._set_dropouts(cfg["dropout"], cfg["head_dropout"])

    def check_adapter_config(self, cfg: dict[str, Any]) -> None:
        """Raise ConfigError unless an adapter config fits this model (structure, base weights)."""
        for field in ("r", "alpha", "target_modules", "num_classes"):
            if cfg.get(field) != self.config[field]:
                raise ConfigError(
                    f"Adapter field {field!r} is {cfg.get(field)!r} but this model has "
                    f"{self.config[field]!r}; build RETFoundLoRA with the adapter's settings "
                    "(RETFoundLoRA.from_adapters)."
                )
        base = cfg.get("base_model") or {}
        theirs, ours = base.get("kwargs") or {}, retfound_builder_kwargs(self.vit)
        for field in _STRUCTURAL:
            if theirs.get(field) != ours[field]:
                raise ConfigError(
                    f"Adapter base_model.kwargs.{field} is {theirs.get(field)!r} but the loaded "
                    f"base has {ours[field]!r}; load the base model the adapter was trained on."
                )
        mine = _fingerprint(self.vit)
        if base.get("fingerprint") and mine and base["fingerprint"] != mine:
            raise ConfigError(
                "Adapter base_model.fingerprint does not match the loaded base weights; the "
                "adapter was trained on another RETFound checkpoint: load that one."
            )

    def _set_dropouts(self, dropout: float, head_dropout: float) -> None:
        for module in self._lora_modules():
            module.lora_dropout.p = float(dropout)
        if isinstance(self.vit.head_drop, nn.Dropout):  # set p in place: keeps train/eval mode
            self.vit.head_drop.p = float(head_dropout)
        else:
            self.vit.head_drop = nn.Dropout(float(head_dropout)).train(self.training)
        self.config.update(dropout=float(dropout), head_dropout=float(head_dropout))

    def merge_and_unload(self, inplace: bool = False) -> nn.Module:
        """A plain timm ViT with LoRA folded into the weights (same logits up to rounding).

        By default works on a copy so a base shared by several adapters stays intact.
        """
        vit = self.vit if inplace else copy.deepcopy(self.vit)
        for name, module in list(vit.named_modules()):
            if isinstance(module, LoRALinear):
                parent_name, _, child = name.rpartition(".")
                setattr(vit.get_submodule(parent_name) if parent_name else vit, child,
                        module.to_linear())
        vit.requires_grad_(True)
        return vit


def _fingerprint(vit: nn.Module) -> str | None:
    """sha256 of the frozen patch embedding: tells RETFound checkpoints apart cheaply.

    Only for float32 bases (a bf16/fp16 copy has other bytes); ``None`` otherwise.
    """
    weight = vit.patch_embed.proj.weight.detach()
    if weight.dtype != torch.float32:
        return None
    return hashlib.sha256(weight.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _check_tensors(own: dict[str, Tensor], theirs: dict[str, Tensor], path: Path) -> None:
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(theirs) if theirs[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise BundleError(
            f"{path} does not fit this model: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes}; re-export the adapter from a matching model."
        )
