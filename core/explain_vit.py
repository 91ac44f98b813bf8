"""Transformer helpers for explanations: token -> grid reshapes and attention rollout.

Kept apart from core.explain so the CAM plumbing stays short. Nothing here hard-codes a 14x14
grid: the grid comes from the input size and the model's own patch size, so RETFound at 224 px,
a test ViT at 64 px and a ``dynamic_img_size`` model at 448 px all fold correctly.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch import nn

from core.errors import ConfigError


def find_vit(model: nn.Module) -> nn.Module:
    """The (sub)module that owns ``patch_embed``: the model itself or a wrapped backbone."""
    for module in model.modules():
        if hasattr(module, "patch_embed"):
            return module
    raise ConfigError(
        "This model has no 'patch_embed' module, so it is not a timm ViT/Swin: "
        "explain it with arch='cnn' (or pick a method other than attention_rollout)."
    )


def _patch_size(vit: nn.Module) -> tuple[int, int]:
    size = getattr(vit.patch_embed, "patch_size", None)
    if size is None:
        raise ConfigError("patch_embed has no patch_size; cannot fold tokens into a grid.")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def token_grid(model: nn.Module, input_hw: tuple[int, int], n_tokens: int) -> tuple[int, int, int]:
    """(prefix tokens, grid h, grid w) for a token sequence of length ``n_tokens``."""
    vit = find_vit(model)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    ph, pw = _patch_size(vit)
    h, w = input_hw
    for gh, gw in ((h // ph, w // pw), (-(-h // ph), -(-w // pw))):  # floor, then padded (ceil)
        if gh * gw == n_tokens - prefix:
            return prefix, gh, gw
    raise ConfigError(
        f"{n_tokens} tokens minus {prefix} prefix tokens do not fold into the {h}x{w} input's "
        f"patch grid ({h // ph}x{w // pw} with patch {ph}x{pw}); pick a token layer such as "
        "'blocks.N.norm1' of this ViT."
    )


def vit_reshape(
    model: nn.Module, input_hw: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, N, C) tokens -> (B, C, gh, gw), dropping the class/register tokens."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            return tokens  # already spatial (e.g. the patch_embed conv)
        prefix, gh, gw = token_grid(model, input_hw, tokens.shape[1])
        grid = tokens[:, prefix:, :].reshape(tokens.shape[0], gh, gw, tokens.shape[2])
        return grid.permute(0, 3, 1, 2)

    return reshape


def swin_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """timm Swin stages are NHWC; CAM code wants NCHW."""
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor


def scale_and_resize(maps: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize then per-image min-max to [0,1], as pytorch-grad-cam scales its CAMs."""
    out = []
    for m in maps.astype(np.float32):
        m = cv2.resize(m, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR)
        m = m - m.min()
        out.append(m / (1e-7 + m.max()))
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def _capture_attention(
    model: nn.Module, batch: torch.Tensor
) -> tuple[list[torch.Tensor], list[str]]:
    """One forward with fused attention off, collecting every block's softmax attention."""
    modules = _attention_modules(model)
    if not modules:
        raise ConfigError(
            "attention_rollout needs timm attention blocks (with 'fused_attn' and 'attn_drop'); "
            "this model has none. Use a Grad-CAM method instead."
        )
    saved = [m.fused_attn for _, m in modules]
    maps: list[torch.Tensor] = []
    handles = [
        m.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out.detach().float()))
        for _, m in modules
    ]
    try:
        for _, m in modules:
            m.fused_attn = False  # fused SDPA never materialises the weights
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
        for (_, m), flag in zip(modules, saved, strict=True):
            m.fused_attn = flag
    if len(maps) != len(modules):
        raise ConfigError(
            f"Captured {len(maps)} attention maps for {len(modules)} blocks; turn gradient "
            "checkpointing or block dropping off before explaining."
        )
    return maps, [f"{name}.attn_drop" for name, _ in modules]


def attention_rollout(model: nn.Module, batch: torch.Tensor) -> tuple[np.ndarray, str]:
    """Abnar & Zuidema (2020) rollout: (B, gh, gw) raw relevance and a layer description.

    Heads averaged, 0.5A + 0.5I, rows renormalised, layers multiplied. CLS row for token
    pooling; for average pooling the mean over patch rows, since every patch feeds the head.
    """
    maps, names = _capture_attention(model, batch)
    vit = find_vit(model)
    n = maps[0].shape[-1]
    eye = torch.eye(n, dtype=maps[0].dtype, device=maps[0].device)
    rollout = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = 0.5 * attn.mean(dim=1) + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    prefix, gh, gw = token_grid(model, tuple(batch.shape[-2:]), n)
    token_pool = getattr(vit, "global_pool", "token") == "token" and prefix > 0
    if token_pool:
        relevance = rollout[:, 0, prefix:]
    else:
        relevance = rollout[:, prefix:, prefix:].mean(dim=1)
    grid = relevance.reshape(-1, gh, gw).cpu().numpy()
    return grid, f"{names[0]} .. {names[-1]} ({len(names)} blocks)"
