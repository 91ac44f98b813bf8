"""Tiny checkpoints in RETFound's exact layouts (MAE and DINOv2), built in memory for tests."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

EMBED, DEPTH, HEADS, PATCH, IMG = 64, 2, 4, 16, 64
DEC_EMBED = 32


def tiny_encoder(depth: int = DEPTH, img_size: int = IMG) -> VisionTransformer:
    """A token-pooled ViT whose state dict has exactly RETFound's encoder keys (norm, no head)."""
    model = VisionTransformer(
        img_size=img_size, patch_size=PATCH, embed_dim=EMBED, depth=depth, num_heads=HEADS,
        num_classes=0, global_pool="token", norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    _randomise_norms(model)
    return model.eval()


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial LayerNorm/LayerScale values so a skipped tensor changes the logits."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("gamma"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))


def mae_state_dict(encoder: VisionTransformer) -> dict[str, Tensor]:
    """Encoder tensors plus MAE's decoder tensors and mask_token, as in RETFound_cfp_weights.pth."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    tokens = state["pos_embed"].shape[1]
    state["mask_token"] = torch.randn(1, 1, DEC_EMBED)
    state["decoder_embed.weight"] = torch.randn(DEC_EMBED, EMBED)
    state["decoder_embed.bias"] = torch.zeros(DEC_EMBED)
    state["decoder_pos_embed"] = torch.randn(1, tokens, DEC_EMBED)
    block = (("norm1.weight", (DEC_EMBED,)), ("attn.qkv.weight", (3 * DEC_EMBED, DEC_EMBED)))
    for part, shape in block:
        state[f"decoder_blocks.0.{part}"] = torch.randn(shape)
    state["decoder_norm.weight"] = torch.ones(DEC_EMBED)
    state["decoder_pred.weight"] = torch.randn(PATCH * PATCH * 3, DEC_EMBED)
    state["decoder_pred.bias"] = torch.zeros(PATCH * PATCH * 3)
    return state


def write_mae_checkpoint(path: Path, state: dict[str, Tensor], with_args: bool = True) -> Path:
    """torch.save in the MAE training layout: model, args Namespace, optimizer, epoch, scaler."""
    ckpt: dict = {
        "model": state,
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0]}]},
        "epoch": 799,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 12},
    }
    if with_args:
        ckpt["args"] = argparse.Namespace(model="mae_vit_large_patch16", input_size=224,
                                          mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4)
    torch.save(ckpt, path)
    return path


def tiny_dinov2_encoder() -> VisionTransformer:
    """A DINOv2-style ViT (patch 14, LayerScale, SwiGLU packed MLP), CLS pooling."""
    model = VisionTransformer(
        img_size=56, patch_size=14, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
        num_classes=0, global_pool="token", init_values=1e-5, mlp_ratio=3.0,
        mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    _randomise_norms(model)
    return model.eval()


def dinov2_teacher(encoder: VisionTransformer, chunked: bool = False) -> dict[str, Tensor]:
    """The 'teacher' dict of a DINOv2 checkpoint: backbone.* (w12/w3 names) plus heads."""
    teacher: dict[str, Tensor] = {}
    for key, value in encoder.state_dict().items():
        key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        if chunked and key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index)}.{index}.{rest}"  # one block per FSDP chunk
        teacher[f"backbone.{key}"] = value.clone()
    teacher["backbone.mask_token"] = torch.zeros(1, EMBED)
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, EMBED)
    teacher["ibot_head.mlp.0.weight"] = torch.randn(16, EMBED)
    return teacher
