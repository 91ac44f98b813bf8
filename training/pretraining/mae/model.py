"""The masked autoencoder of facebookresearch/mae (``models_mae.py``) over the RETFound tier's ViT.

The encoder is ``core.archs.retfound.build_retfound_vit`` (a timm ``VisionTransformer``) with
CLS-token pooling, whose modules are adopted here as they are: ``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.*`` and ``norm`` keep the names RETFound's released
checkpoints use. The decoder adds ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks.N.*`` (timm ``Block``, as MAE), ``decoder_norm`` and ``decoder_pred``. So
``state_dict()`` *is* RETFound's ``'model'`` entry, and ``load_retfound_model`` /
``training.interchange.import_retfound`` / ``RETFoundLoRA`` read a saved one unchanged.

As in MAE: both position embeddings are fixed 2-D sin-cos tables (``requires_grad=False``);
each sample keeps a random 25% of its patches (per-sample shuffle); the loss is the mean squared
error on the masked patches only, against per-patch normalised pixels (``norm_pix_loss``).
"""

from __future__ import annotations

import argparse
import math
import pickle
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.archs.retfound import build_retfound_vit, load_retfound_model
from core.errors import CheckpointError, ConfigError

DECODER_PREFIXES = ("decoder_", "mask_token")
_LN = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> Tensor:
    """MAE's fixed 2-D sin-cos table (1, [1 +] grid*grid, dim); the CLS row is zeros."""
    if dim % 4:
        raise ConfigError(f"sin-cos position embeddings need a width divisible by 4, got {dim}.")
    coords = np.arange(grid, dtype=np.float32)
    grid_w, grid_h = np.meshgrid(coords, coords)  # w first, as MAE's util/pos_embed.py
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_axis(grid_w), one_axis(grid_h)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


class MaskedAutoencoderViT(nn.Module):
    """MAE with RETFound's parameter names; ``forward`` returns (loss, pred, mask)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        vit = build_retfound_vit(num_classes=0, global_pool="token", img_size=img_size,
                                 patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                 num_heads=num_heads, mlp_ratio=mlp_ratio)
        self._adopt_encoder(vit)
        self.grid = img_size // patch_size
        self.num_heads = num_heads
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.grid**2 + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=_LN)
            for _ in range(decoder_depth)])
        self.decoder_norm = _LN(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * 3, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = False
        self.initialize_weights()

    def _adopt_encoder(self, vit: nn.Module) -> None:
        """Take the timm ViT's encoder modules under their own names (RETFound's keys)."""
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.pos_embed.requires_grad_(False)  # fixed sin-cos, as MAE
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)

    def initialize_weights(self) -> None:
        """MAE's init: sin-cos tables, xavier-uniform Linear and patch projection, N(0, .02)
        tokens, LayerNorm 1/0."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed(self.pos_embed.shape[-1], self.grid))
            self.decoder_pos_embed.copy_(
                sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid))
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(self.cls_token, std=0.02)
            nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ patches and masks
    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, L, p*p*3), MAE's order (row of patches, then pixel, then channel)."""
        p, n = self.patch_size, imgs.shape[0]
        h, w = imgs.shape[2] // p, imgs.shape[3] // p
        x = imgs.reshape(n, 3, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * 3)

    def unpatchify(self, x: Tensor) -> Tensor:
        p, n = self.patch_size, x.shape[0]
        h = w = math.isqrt(x.shape[1])
        x = x.reshape(n, h, w, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, 3, h * p, w * p)

    @staticmethod
    def random_masking(x: Tensor, mask_ratio: float, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """Keep a random (1 - mask_ratio) of each sample's tokens (per-sample shuffle).

        Returns the kept tokens, the mask (N, L; 1 = masked, removed) and ids_restore.
        """
        n, length, dim = x.shape
        keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    # ------------------------------------------------------------------ forward
    def _run(self, blocks: nn.Module, x: Tensor) -> Tensor:
        for blk in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_encoder(self, imgs: Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = self._run(self.blocks, torch.cat([cls, x], dim=1))
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(x)
        n, length = x.shape[0], ids_restore.shape[1]
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1).to(x.dtype)
        tokens = torch.cat([x[:, 1:, :], masked], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self._run(self.decoder_blocks, x))
        return self.decoder_pred(x)[:, 1:, :]

    def target(self, imgs: Tensor) -> Tensor:
        """Per-patch targets: pixels, normalised per patch when ``norm_pix_loss``."""
        target = self.patchify(imgs.float())
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only (fp32)."""
        loss = ((pred.float() - self.target(imgs)) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # ------------------------------------------------------------------ weights
    def encoder_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODER_PREFIXES)}

    def load_init(self, path: str | Path) -> list[str]:
        """Start from a RETFound-layout checkpoint (domain-adaptive pretraining).

        The encoder goes through ``load_retfound_model`` (safe read, every key checked,
        ``pos_embed`` resampled to this grid); the decoder, when the file has one, must match
        this model's decoder exactly. Returns notes for the log.
        """
        img = self.grid * self.patch_size
        vit = load_retfound_model(path, num_classes=0, global_pool="token", img_size=img,
                                  num_heads=self.num_heads)
        theirs = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in self.encoder_state_dict().items()}
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ConfigError(
                f"{path}: its encoder ({vit.embed_dim}-d, {len(vit.blocks)} blocks, patch "
                f"{vit.patch_embed.patch_size[0]}) is not model.size's; differing keys: "
                f"{diff[:8]}. Pick the model.size of the checkpoint (RETFound: vit_large_patch16).")
        self.load_state_dict(vit.state_dict(), strict=False)
        decoder = {k: v for k, v in read_raw_state(path).items()
                   if k.startswith(DECODER_PREFIXES)}
        if not decoder:
            return [f"init: encoder from {path}; it has no decoder, the decoder starts fresh"]
        return [f"init: encoder and decoder from {path}"] + self._load_decoder(decoder, path)

    def _load_decoder(self, decoder: dict[str, Tensor], path: str | Path) -> list[str]:
        own = {k: v for k, v in self.state_dict().items() if k.startswith(DECODER_PREFIXES)}
        notes = []
        pos = decoder.get("decoder_pos_embed")
        if pos is not None and pos.shape != own["decoder_pos_embed"].shape:
            decoder.pop("decoder_pos_embed")  # a fixed sin-cos table: ours fits this grid
            notes.append("init: decoder_pos_embed recomputed for this grid (fixed sin-cos)")
        missing = sorted(set(own) - set(decoder) - {"decoder_pos_embed"})
        unexpected = sorted(set(decoder) - set(own))
        shapes = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                        for k, v in decoder.items() if k in own and v.shape != own[k].shape)
        if missing or unexpected or shapes:
            raise ConfigError(
                f"{path}: its decoder does not fit model.decoder_* (missing {missing[:6]}, "
                f"unexpected {unexpected[:6]}, shapes {shapes[:6]}). Set model.decoder_embed_dim, "
                "decoder_depth and decoder_num_heads to the checkpoint's (RETFound: 512, 8, 16).")
        self.load_state_dict(decoder, strict=False)
        return notes


def read_raw_state(path: str | Path) -> dict[str, Tensor]:
    """The ``'model'`` dict (or a bare state dict) of a .pth, read with ``weights_only=True``."""
    return _state_of(_load(path), path)


def read_mae_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(state dict, arch) of an MAE checkpoint: this trainer's (its saved ``arch``) or
    RETFound's (sizes read off the tensors, norm_pix_loss from its ``args``, default True)."""
    raw = _load(path)
    state = _state_of(raw, path)
    arch = raw.get("arch") if isinstance(raw.get("arch"), Mapping) else None
    if arch is None:
        arch = arch_from_state(state) | {
            "img_size": grid_of(state) * int(state["patch_embed.proj.weight"].shape[-1]),
            "norm_pix_loss": bool(getattr(raw.get("args"), "norm_pix_loss", True))}
    return state, dict(arch) | {"epoch": raw.get("epoch") if isinstance(raw, Mapping) else None}


def _load(path: str | Path):
    if not Path(path).is_file():
        raise CheckpointError(f"{path} does not exist; give the path of an MAE .pth file.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as a weights-only checkpoint ({exc}).") from exc


def _state_of(raw, path: str | Path) -> dict[str, Tensor]:
    state = raw.get("model", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no 'model' state dict of tensors.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def build_mae(arch: Mapping[str, int], img_size: int, norm_pix_loss: bool = True
              ) -> MaskedAutoencoderViT:
    """A model from ``MAEConfig.arch()`` (or a checkpoint's saved ``arch``)."""
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
            "decoder_depth", "decoder_num_heads")
    return MaskedAutoencoderViT(img_size=img_size, norm_pix_loss=norm_pix_loss,
                                **{k: int(arch[k]) for k in keys})


def arch_from_state(state: Mapping[str, Tensor]) -> dict[str, int]:
    """Encoder and decoder sizes read off a RETFound-layout state dict (heads: MAE's rule,
    encoder width / 64 and decoder width / 32, since checkpoints do not store them)."""
    if "patch_embed.proj.weight" not in state or "decoder_embed.weight" not in state:
        raise CheckpointError("Not an MAE checkpoint: 'patch_embed.proj.weight' or "
                              "'decoder_embed.weight' is missing (an encoder-only file cannot "
                              "reconstruct).")
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    dec_dim = state["decoder_embed.weight"].shape[0]

    def depth(prefix: str) -> int:
        ids = {int(k.split(".")[1]) for k in state if k.startswith(prefix)}
        return max(ids) + 1 if ids else 0

    return dict(patch_size=int(patch), embed_dim=int(embed_dim), depth=depth("blocks."),
                num_heads=max(1, int(embed_dim) // 64), decoder_embed_dim=int(dec_dim),
                decoder_depth=depth("decoder_blocks."), decoder_num_heads=max(1, int(dec_dim) // 32))


def grid_of(state: Mapping[str, Tensor]) -> int:
    return math.isqrt(state["pos_embed"].shape[1] - 1)
