"""RETFound as a plain timm VisionTransformer, and a safe importer for its checkpoints.

Why timm's own class: RETFound's ``models_vit.py`` crashes on timm 1.0.31 (and applies
``fc_norm`` twice on older timm), so we build timm's ``VisionTransformer`` with the same
parameter names as ``vit_large_patch16_224`` and load the weights by hand, checking that every
encoder key lands (RETFound's own loader ignores the load result).

Checkpoint layouts read here (see /work/shared/RETFOUND.md):

- MAE (``RETFound_cfp_weights.pth``, ``RETFound_mae_*``): ``{'model': ..., 'args': Namespace,
  'optimizer', 'epoch', 'scaler'}``; decoder keys and ``mask_token`` are dropped.
- DINOv2 (``RETFound_dinov2_*``): ``{'teacher': {'backbone.*': ...}}`` in the timm
  ``vit_*_patch14_dinov2`` layout (LayerScale ``ls1/ls2.gamma``); DINOv2's SwiGLU names
  ``mlp.w12``/``mlp.w3`` map to timm's ``SwiGLUPacked`` ``mlp.fc1``/``mlp.fc2`` and FSDP block
  chunks (``blocks.<chunk>.<i>.``) are flattened. RETFound's DINOv2 models use CLS pooling
  (``global_pool="token"``).
- A bare encoder state dict (``.pth`` or ``.safetensors``). A single uniform ``module.`` prefix
  (DistributedDataParallel) is stripped; any other prefix is an error naming the keys.

Files are read with ``torch.load(weights_only=True)`` only (``argparse.Namespace`` allow-listed for
that one call); a pickle that would run code is refused with ``CheckpointError``.

Licence: the RETFound weights (MAE and DINOv2) are released by their authors under CC BY-NC 4.0
(non-commercial use, attribution). This code does not ship them; a model built from them inherits
that licence, whatever the licence of this project's code.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import GluMlp, LayerScale, Mlp, SwiGLUPacked, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from core.errors import CheckpointError, ConfigError

__all__ = [
    "build_retfound_vit",
    "count_encoder_params",
    "global_pool_mode",
    "init_retfound_head",
    "load_retfound_model",
    "read_retfound_checkpoint",
    "retfound_builder_kwargs",
    "retfound_kwargs_from_state_dict",
]

POOLING_MODES = ("avg", "token")
PoolArg = bool | str  # RETFound's boolean flag or the mode name
MLP_KINDS = ("gelu", "swiglu_packed")
# Standard ViT widths -> depths; a checkpoint of one of these widths with fewer blocks lost some.
_KNOWN_DEPTHS = {384: 12, 768: 12, 1024: 24, 1280: 32, 1536: 40}
_DROPPED_PREFIXES = ("decoder_", "mask_token")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
_MAX_KEYS_SHOWN = 400


def build_retfound_vit(
    num_classes: int = 5,
    global_pool: PoolArg = "avg",
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 1024,
    depth: int = 24,
    num_heads: int = 16,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    init_values: float | None = None,
    mlp: str = "gelu",
) -> VisionTransformer:
    """RETFound's ViT (defaults: ViT-L/16 MAE) from kwargs alone, so bundles can rebuild it.

    ``global_pool="avg"`` (RETFound's ``True``) averages patch tokens then applies ``fc_norm``
    (``norm`` is Identity); ``"token"`` (``False``) takes the CLS token after ``norm``.
    ``init_values`` (LayerScale) and ``mlp="swiglu_packed"`` exist for the DINOv2 variants.
    ``num_classes=0`` returns pooled ``embed_dim`` features. The head is re-initialised as
    RETFound does (std 2e-5, bias 0).
    """
    global_pool = global_pool_mode(global_pool)
    _check_build_args(global_pool, img_size, patch_size, embed_dim, num_heads, mlp, num_classes)
    swiglu = mlp == "swiglu_packed"
    model = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        init_values=init_values,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        mlp_layer=SwiGLUPacked if swiglu else Mlp,
        act_layer=nn.SiLU if swiglu else None,
    )
    init_retfound_head(model)
    return model


def global_pool_mode(global_pool: PoolArg) -> str:
    """``"avg"`` or ``"token"`` from RETFound's boolean flag or the mode name.

    RETFound's ``--global_pool``: True = mean of the patch tokens + ``fc_norm``, False = CLS token
    after ``norm``. Only real booleans count as the flag (``0``/``1`` are refused, not guessed).
    """
    if isinstance(global_pool, bool):
        return "avg" if global_pool else "token"
    if global_pool in POOLING_MODES:
        return global_pool
    raise ConfigError(
        f"global_pool={global_pool!r} is not supported; use 'avg' or True (mean of the patch "
        "tokens + fc_norm), or 'token' or False (the CLS token)."
    )


def _check_build_args(
    global_pool: str, img_size: int, patch_size: int, embed_dim: int, num_heads: int, mlp: str,
    num_classes: int,
) -> None:
    if mlp not in MLP_KINDS:
        raise ConfigError(f"mlp={mlp!r} is not supported; use one of {MLP_KINDS}.")
    if patch_size <= 0 or img_size % patch_size:
        raise ConfigError(
            f"img_size={img_size} is not a multiple of patch_size={patch_size}; pick e.g. "
            f"{max(1, img_size // max(patch_size, 1)) * patch_size}."
        )
    if num_heads <= 0 or embed_dim % num_heads:
        raise ConfigError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}.")
    if num_classes < 0:
        raise ConfigError(f"num_classes={num_classes} must be >= 0 (0 returns features).")


def init_retfound_head(model: nn.Module) -> None:
    """RETFound's head init: trunc_normal_(std=2e-5), zero bias (tiny logits at the start)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        trunc_normal_(head.weight, std=2e-5)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def retfound_builder_kwargs(model: VisionTransformer) -> dict[str, Any]:
    """The ``build_retfound_vit`` kwargs that rebuild ``model``'s structure (for manifests)."""
    block = model.blocks[0]
    hidden = block.mlp.fc1.out_features
    drop_path = getattr(model.blocks[-1].drop_path1, "drop_prob", 0.0)
    return {
        "num_classes": int(model.num_classes),
        "global_pool": str(model.global_pool),
        "img_size": int(model.patch_embed.img_size[0]),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": _mlp_ratio(hidden, model.embed_dim),
        "drop_path_rate": float(drop_path),
        "init_values": 1e-5 if isinstance(block.ls1, LayerScale) else None,
        "mlp": "swiglu_packed" if isinstance(block.mlp, GluMlp) else "gelu",
    }


def _mlp_ratio(hidden: int, embed_dim: int) -> float:
    """A ratio r with int(embed_dim * r) == hidden, as timm's Block computes the width."""
    ratio = hidden / embed_dim
    if int(embed_dim * ratio) != hidden:
        ratio = (hidden + 0.5) / embed_dim
    return ratio


def count_encoder_params(model: nn.Module) -> int:
    """Parameters outside any module named ``head`` (the classifier), LoRA tensors included."""
    head_ids = {
        id(p)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "head"
        for p in module.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in head_ids)


# --------------------------------------------------------------------------- reading checkpoints


def read_retfound_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The encoder state dict of a RETFound checkpoint, in timm key names, read without pickle code.

    Accepts the MAE layout (``'model'``), the DINOv2 layout (``'teacher'`` / ``backbone.``) and a
    bare state dict; drops ``decoder_*`` and ``mask_token``; strips one uniform ``module.``.
    """
    path = Path(path)
    raw = _load_file(path)
    state = _select_encoder(raw, path)
    return _normalise_keys(state)


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level entries that are not tensors or state dicts (e.g. "format",
    "config", "epoch" of this project's MAE checkpoints), read the same safe way."""
    raw = _load_file(Path(path))
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items()
            if not isinstance(v, Tensor) and k not in ("model", "teacher", "optimizer")}


def _load_file(path: Path) -> Any:
    if not path.is_file():  # before torch.load, whose error reads like a broken download
        raise CheckpointError(
            f"RETFound checkpoint {path} does not exist; give the path of the .pth file."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}).") from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}: it contains pickled objects that are not plain tensors or "
            f"argparse.Namespace, and loading them could run code ({_first_line(exc)}). Use the "
            "original RETFound weights file, or re-save only the state dict of a file you trust."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)}); the download "
            "may be truncated: download it again."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _select_encoder(raw: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict.")
    if isinstance(raw.get("model"), Mapping):
        state = dict(raw["model"])
    elif isinstance(raw.get("teacher"), Mapping):
        state = _dinov2_backbone(raw["teacher"], path)
    elif raw and all(isinstance(v, Tensor) for v in raw.values()):
        state = dict(raw)
    else:
        raise CheckpointError(
            f"{path} has no 'model' (MAE) or 'teacher' (DINOv2) entry and is not a bare state "
            "dict; "
            f"top-level keys: {sorted(map(str, raw))[:20]}. Use a RETFound weights file."
        )
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:20]}.")
    return state


def _dinov2_backbone(teacher: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    state = {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
    if not state:
        raise CheckpointError(
            f"{path}: 'teacher' holds no 'backbone.*' keys (found {sorted(teacher)[:10]}); "
            "this is not a RETFound DINOv2 checkpoint."
        )
    return state


def _normalise_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    return out


# --------------------------------------------------------------------------- building from tensors


def retfound_kwargs_from_state_dict(
    state: Mapping[str, Tensor],
    num_classes: int = 5,
    global_pool: PoolArg = "avg",
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    num_heads: int | None = None,
) -> dict[str, Any]:
    """``build_retfound_vit`` kwargs inferred from encoder tensors (width, depth, patch, MLP)."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise _layout_error(state)
    embed_dim, _, patch_size, _ = state["patch_embed.proj.weight"].shape
    depth = _infer_depth(state, embed_dim)
    mlp, ratio = _infer_mlp(state, embed_dim)
    return {
        "num_classes": num_classes,
        "global_pool": global_pool_mode(global_pool),
        "img_size": img_size,
        "patch_size": int(patch_size),
        "embed_dim": int(embed_dim),
        "depth": depth,
        "num_heads": int(num_heads if num_heads is not None else max(1, embed_dim // 64)),
        "mlp_ratio": ratio,
        "drop_path_rate": drop_path_rate,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,
        "mlp": mlp,
    }


def _layout_error(state: Mapping[str, Tensor]) -> CheckpointError:
    keys = sorted(state)
    anchors = [k for k in keys if k.endswith("patch_embed.proj.weight")]
    hint = ""
    if anchors:
        prefix = anchors[0][: -len("patch_embed.proj.weight")]
        hint = f" The keys carry the prefix {prefix!r}; save the encoder without it."
    return CheckpointError(
        "Not a ViT encoder in RETFound's layout: 'patch_embed.proj.weight' / 'pos_embed' are "
        f"missing.{hint} Unexpected keys: {_show(keys)}"
    )


def _infer_depth(state: Mapping[str, Tensor], embed_dim: int) -> int:
    indices = {int(m.group(1)) for k in state if (m := _BLOCK_INDEX.match(k))}
    if not indices:
        raise CheckpointError("The checkpoint has no 'blocks.N.*' keys; it is not a ViT encoder.")
    depth = max(indices) + 1
    expected = _KNOWN_DEPTHS.get(int(embed_dim), depth)
    absent = sorted(set(range(max(depth, expected))) - indices)
    if absent:
        raise CheckpointError(
            f"Transformer blocks {absent} are missing from the checkpoint (width {embed_dim} "
            f"means {max(depth, expected)} blocks): missing keys "
            f"{', '.join(f'blocks.{i}.*' for i in absent)}. "
            "The file is incomplete; download it again."
        )
    return depth


def _infer_mlp(state: Mapping[str, Tensor], embed_dim: int) -> tuple[str, float]:
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None:
        raise CheckpointError(
            "Missing keys blocks.0.mlp.fc1.weight / blocks.0.mlp.fc2.weight (or DINOv2's "
            "mlp.w12 / mlp.w3); this is not a RETFound encoder."
        )
    hidden, hidden_in = fc1.shape[0], fc2.shape[1]
    if hidden == hidden_in:
        return "gelu", _mlp_ratio(hidden, embed_dim)
    if hidden == 2 * hidden_in:
        return "swiglu_packed", _mlp_ratio(hidden, embed_dim)
    raise CheckpointError(f"MLP shapes fc1 {tuple(fc1.shape)} / fc2 {tuple(fc2.shape)} do not fit.")


def load_retfound_model(
    checkpoint_path: str | Path,
    num_classes: int = 5,
    global_pool: PoolArg = "avg",
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    num_heads: int | None = None,
) -> VisionTransformer:
    """A timm ViT holding RETFound's encoder weights and a fresh head (std 2e-5).

    ``global_pool`` takes RETFound's boolean (False = CLS token, True = average pooling with
    ``fc_norm``) or ``"token"`` / ``"avg"``. Architecture comes from the tensors; ``num_heads``
    defaults to ``embed_dim // 64``.
    ``pos_embed`` is resampled bicubically when ``img_size`` changes the grid. Every encoder key
    must land: only ``head.*`` (and ``fc_norm.*`` in avg mode) may stay missing, nothing may be
    unexpected, else ``CheckpointError`` lists the keys. The kwargs that rebuild the module are
    in ``model.retfound_kwargs``.
    """
    global_pool = global_pool_mode(global_pool)
    state = read_retfound_checkpoint(checkpoint_path)
    kwargs = retfound_kwargs_from_state_dict(
        state, num_classes, global_pool, img_size, drop_path_rate, num_heads
    )
    model = build_retfound_vit(**kwargs)
    state = _fit_to_model(state, model)
    _load_checked(model, state, global_pool, checkpoint_path)
    model.retfound_kwargs = kwargs
    return model


def _fit_to_model(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """Drop ``norm.*`` when pooling is avg (RETFound's layout) and resample ``pos_embed``.

    Upsampling matches RETFound's ``interpolate_pos_embed`` (bicubic, no antialias);
    downsampling (DINOv2's 37x37 grid to 16x16) antialiases as timm's own DINOv2 loader does.
    """
    state = dict(state)
    if model.global_pool == "avg":
        for key in ("norm.weight", "norm.bias"):
            state.pop(key, None)
    pos = state["pos_embed"]
    grid = tuple(model.patch_embed.grid_size)
    if pos.shape[1] != 1 + grid[0] * grid[1]:
        old = math.isqrt(pos.shape[1] - 1)
        if old * old != pos.shape[1] - 1:
            raise CheckpointError(f"pos_embed {tuple(pos.shape)} is not a square grid + CLS token.")
        state["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=list(grid), old_size=[old, old], num_prefix_tokens=1,
            interpolation="bicubic", antialias=grid[0] < old,
        ).to(pos.dtype)
    return state


def _load_checked(
    model: nn.Module, state: dict[str, Tensor], global_pool: str, path: str | Path
) -> None:
    own = model.state_dict()
    mismatched = sorted(
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    )
    fresh = ("head.",) + (("fc_norm.",) if global_pool == "avg" else ())
    missing = sorted(k for k in own if k not in state and not k.startswith(fresh))
    unexpected = sorted(k for k in state if k not in own or k.startswith(fresh))
    if mismatched or missing or unexpected:
        raise CheckpointError(
            f"RETFound checkpoint {path} does not fit the ViT (global_pool={global_pool!r}): "
            f"missing keys: {_show(missing)}; unexpected keys: {_show(unexpected)}; shape "
            f"mismatches: {_show(mismatched)}. Use an unmodified RETFound pretraining checkpoint "
            "(encoder keys without any prefix) and the pooling it was trained for."
        )
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith(fresh)]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise CheckpointError(f"Load left keys unmatched: {leftover + result.unexpected_keys}.")


def _show(keys: list[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")
