"""Explanations: Grad-CAM family (pytorch-grad-cam 1.5.7) and attention rollout, fast and safe.

Why the ceremony around pytorch-grad-cam:
- Speed: used as shipped it back-propagates into every weight and all the way to the input
  (ViT-L: 14x a forward on 2 cores). Here no parameter requires grad and a forward hook on the
  target layer swaps its output for a detached copy that does, so autograd records and replays
  only the layers *after* the target: the gradient w.r.t. that activation is unchanged.
- Safety: a cached model is shared by every browser session. CAM hooks exist only inside one
  call, the call holds ``model_lock(model)`` (the predictor takes the same lock for forwards),
  and every flag touched (requires_grad, .grad, train/eval, gradient checkpointing) is restored,
  also when the call raises.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
)
from torch import nn

from core.errors import ConfigError
from core.explain_vit import (
    attention_rollout,
    find_vit,
    scale_and_resize,
    swin_reshape,
    vit_reshape,
)
from core.overlay import overlay

__all__ = ["CLASS_AGNOSTIC", "METHODS", "Explanation", "explain", "model_lock", "overlay", "suggest_layer"]

log = logging.getLogger(__name__)

_CAMS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}
METHODS: tuple[str, ...] = (*_CAMS, "attention_rollout")
_GRADIENT_FREE = {"eigencam", "scorecam", "attention_rollout"}
CLASS_AGNOSTIC = frozenset({"eigencam", "attention_rollout"})
SCORECAM_MAX_CPU_PARAMS = 30_000_000
MIN_LESION_GRID = 20  # cells across the model input for a CNN's default target layer
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass(frozen=True)
class Explanation:
    """One image's heatmap (HxW float32 in [0,1] at the input tensor's size) and what it explains.

    ``raw_max`` is the map's peak before per-image min-max scaling, so a weak map can be shown weak.
    """

    heatmap: np.ndarray
    method: str
    target: str
    target_class: int | None
    layer: str
    raw_max: float


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model``; hold it for every forward of an explained model."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """Dotted name -> module; integer parts (also negative) index Sequentials/ModuleLists."""
    module = model
    for part in layer.split("."):
        child = module._modules.get(part)
        indexable = isinstance(module, (nn.Sequential, nn.ModuleList))
        if child is None and indexable and part.lstrip("-").isdigit():
            try:
                child = module[int(part)]
            except IndexError:
                child = None
        if child is None:
            raise ConfigError(
                f"Layer {layer!r}: no submodule {part!r}; pick a dotted module name such as "
                f"{[n for n, _ in model.named_children()][:8]} followed by its children."
            )
        module = child
    return module


def suggest_layer(model: nn.Module, arch: str = "cnn", input_size: int | None = None) -> str:
    """A sensible default target layer (RETFOUND.md): ViT blocks[-1].norm1, resnet layer4, ...

    With `input_size`, a CNN gets the deepest stage whose map still has MIN_LESION_GRID cells
    across (timm's feature_info): DR lesions are a few pixels wide, and a 6x6 last-stage map of
    a 192-px input cannot point at one (benchmarks/explain_quality.py measures the difference).
    """
    names = dict(model.named_modules())
    if arch == "vit":
        vit = find_vit(model)
        prefix = next(n for n, m in names.items() if m is vit)
        return f"{prefix + '.' if prefix else ''}blocks.{len(vit.blocks) - 1}.norm1"
    staged = _finest_useful_stage(model, input_size) if input_size else None
    if staged:
        return staged
    top_level = [n for n in names if not any(p.isdigit() for p in n.split("."))]
    for suffix in ("layers", "stages", "layer4", "bn2", "features", "blocks"):
        hits = [n for n in top_level if n == suffix or n.endswith("." + suffix)]
        if hits:
            target = names[hits[0]]
            if isinstance(target, (nn.Sequential, nn.ModuleList)) and suffix != "features":
                return f"{hits[0]}.{len(target) - 1}"
            return hits[0]
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("No convolution found; pass layer= explicitly.")
    return convs[-1]


def _finest_useful_stage(model: nn.Module, input_size: int) -> str | None:
    """Deepest timm feature stage with at least MIN_LESION_GRID cells per side, if any."""
    for prefix, module in model.named_modules():
        info = getattr(module, "feature_info", None)
        if not isinstance(info, list) or not info:
            continue
        fine = [f["module"] for f in info if int(f["reduction"]) >= 8  # past the stem
                and input_size // int(f["reduction"]) >= MIN_LESION_GRID]
        return f"{prefix + '.' if prefix else ''}{fine[-1]}" if fine else None
    return None


class _ClassTarget:
    """Logit of one class; a clear error instead of pytorch-grad-cam's swallowed IndexError."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.k < out.shape[-1]:
            n = out.shape[-1]
            raise ConfigError(f"target={self.k} but the model has {n} classes (0-{n - 1}).")
        return out[..., self.k]


class _ReferableTarget:
    """Sum of softmax probabilities of grades 2-4: the referable decision itself."""

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[-1] < 5:
            raise ConfigError(
                "target='referable' needs the 5 ICDR grades; "
                f"the model has {out.shape[-1]} outputs."
            )
        return torch.softmax(out[..., :5], dim=-1)[..., 2:5].sum(dim=-1)  # a 6th logit: DME


DME_LOGIT = 5  # a DME bundle's model returns the 5 grade logits, then its DME head's logit


class _DmeTarget:
    """The DME head's logit (a 6th output); a clear error for a model without one."""

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[-1] <= DME_LOGIT:
            raise ConfigError("target='dme' needs a bundle with a DME output; this model has "
                              f"{out.shape[-1]} outputs.")
        return out[..., DME_LOGIT]


def _hook_snapshot(model: nn.Module) -> dict[tuple[int, str], set[int]]:
    return {(id(m), d): set(getattr(m, d)) for m in model.modules() for d in _HOOK_DICTS}


def _remove_leaked_hooks(model: nn.Module, before: dict[tuple[int, str], set[int]]) -> None:
    """Verify no hook outlives the call; remove (and log) any that did."""
    for m in model.modules():
        for d in _HOOK_DICTS:
            hooks = getattr(m, d)
            for key in set(hooks) - before.get((id(m), d), set()):
                log.warning("explain: removing leaked %s on %s", d, type(m).__name__)
                del hooks[key]
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                              "_forward_pre_hooks_with_kwargs"):
                    getattr(m, extra, {}).pop(key, None)


@contextmanager
def _explanation_mode(model: nn.Module, device_type: str) -> Iterator[None]:
    """Frozen params, eval, fp32, no checkpointing, grad enabled; everything restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    training = [m for m in model.modules() if m.training]
    ckpt = [m for m in model.modules() if getattr(m, "grad_checkpointing", False) is True]
    hooks = _hook_snapshot(model)
    try:
        for p in params:
            p.requires_grad_(False)
        for m in ckpt:
            m.grad_checkpointing = False  # checkpointing re-runs forwards: hooks would fire twice
        for m in training:
            m.training = False  # eval() without touching the (usual) modules already in eval
        no_autocast = torch.autocast(device_type, enabled=False)
        with torch.inference_mode(False), torch.enable_grad(), no_autocast:
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for m in ckpt:
            m.grad_checkpointing = True
        for m in training:
            m.training = True
        _remove_leaked_hooks(model, hooks)


def _reshape_for(arch: str, model: nn.Module, input_hw: tuple[int, int]):
    if arch == "vit":
        return vit_reshape(model, input_hw)
    if arch == "swin":
        return swin_reshape
    if arch == "cnn":
        return None
    raise ConfigError(f"arch={arch!r}; use 'cnn', 'vit' or 'swin'.")


def _leaf_hook(_module: nn.Module, _inputs: tuple, output: object) -> object:
    """Cut the graph at the target layer: backward then stops here instead of at the input."""
    if not isinstance(output, torch.Tensor):
        raise ConfigError("The target layer must output one tensor; pick a different layer.")
    return output.detach().requires_grad_(True).clone()  # clone: tolerate in-place successors


def _check_scorecam(model: nn.Module, device: torch.device) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    if device.type != "cuda" and n_params >= SCORECAM_MAX_CPU_PARAMS:
        raise ConfigError(
            "ScoreCAM needs one forward per channel of the target layer; with "
            f"{n_params / 1e6:.0f}M parameters that takes minutes on a CPU. "
            "Use gradcam (or run on a CUDA GPU)."
        )


def _run_cam(
    model: nn.Module, batch: torch.Tensor, method: str, targets: list | None, layer: str, arch: str
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(maps B,H,W in [0,1], raw peaks B, logits B,K) from one pytorch-grad-cam call."""
    module = resolve_layer(model, layer)
    reshape = _reshape_for(arch, model, tuple(batch.shape[-2:]))
    uses_grad = method not in _GRADIENT_FREE
    leaf = module.register_forward_hook(_leaf_hook) if uses_grad else None
    cam = _CAMS[method](model=model, target_layers=[module], reshape_transform=reshape)
    peaks: list[np.ndarray] = []
    original = cam.get_cam_image

    def recording(*args, **kwargs):
        raw = np.maximum(original(*args, **kwargs), 0)
        peaks.append(raw.reshape(raw.shape[0], -1).max(axis=1))
        return raw

    try:
        cam.get_cam_image = recording
        cam.batch_size = 32
        with torch.enable_grad() if uses_grad else torch.no_grad():
            maps = cam(input_tensor=batch, targets=targets)
        logits = cam.outputs.detach()
    finally:
        cam.activations_and_grads.release()
        cam.outputs = None
        if leaf is not None:
            leaf.remove()
    return np.clip(maps, 0.0, 1.0).astype(np.float32), peaks[0], logits


def _classes(target: int | str, logits: torch.Tensor) -> list[int | None]:
    if target == "predicted":
        return [int(k) for k in logits.argmax(dim=-1).tolist()]
    if target == "referable":
        return [None] * logits.shape[0]
    if target == "dme":
        return [DME_LOGIT] * logits.shape[0]
    return [int(target)] * logits.shape[0]


def _target_label(target: int | str, k: int | None, method: str) -> tuple[str, int | None]:
    if method in CLASS_AGNOSTIC:
        return "class-agnostic", None
    if target == "referable":
        return "referable (grades 2-4)", None
    if target == "dme":
        return "DME (macular oedema output)", None
    if target == "predicted":
        return f"grade {k} (most probable)", k  # the argmax: may differ from the decided grade
    return f"grade {k}", k


def _cam_targets(target: int | str, batch_size: int) -> list | None:
    if target == "predicted":
        return None  # pytorch-grad-cam takes the argmax of the same forward
    if target == "referable":
        return [_ReferableTarget() for _ in range(batch_size)]
    if target == "dme":
        return [_DmeTarget() for _ in range(batch_size)]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return [_ClassTarget(int(target)) for _ in range(batch_size)]
    raise ConfigError(f"target={target!r}; use a class index, 'predicted', 'referable' or 'dme'.")


def explain(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    method: str = "gradcam",
    target: int | str = "predicted",
    layer: str | None = None,
    arch: str = "cnn",
) -> list[Explanation]:
    """Explain a (B,3,H,W) normalised batch; one Explanation per image, maps at H x W.

    ``layer`` is a dotted module name (default: ``suggest_layer``); ignored by attention_rollout.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; choose one of {', '.join(METHODS)}.")
    if batch.dim() != 4:
        raise ValueError(f"batch must be (B,3,H,W), got shape {tuple(batch.shape)}.")
    targets = _cam_targets(target, batch.shape[0])
    device = next(model.parameters()).device
    if method == "scorecam":
        _check_scorecam(model, device)
    with model_lock(model), _explanation_mode(model, device.type):
        x = batch.detach().to(device=device, dtype=torch.float32).clone()
        if method == "attention_rollout":
            if arch != "vit":
                raise ConfigError("attention_rollout applies to ViTs only (arch='vit').")
            grid, used = attention_rollout(model, x)
            peaks = grid.reshape(grid.shape[0], -1).max(axis=1)
            maps, classes = scale_and_resize(grid, tuple(x.shape[-2:])), [None] * len(grid)
        else:
            used = layer or suggest_layer(model, arch)
            maps, peaks, logits = _run_cam(model, x, method, targets, used, arch)
            classes = _classes(target, logits)
    out = []
    for heat, peak, k in zip(maps, peaks, classes, strict=True):
        label, k_out = _target_label(target, k, method)
        out.append(Explanation(np.ascontiguousarray(heat), method, label, k_out, used, float(peak)))
    return out
