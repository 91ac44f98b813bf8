"""Typed MAE pretraining config: YAML + `--set key=value` overrides, unknown keys rejected.

Defaults follow RETFound's pretraining (MAE: mask ratio 0.75, norm-pix loss, AdamW betas
0.9/0.95, weight decay 0.05, blr 1.5e-4 scaled by batch/256, warmup then half-cycle cosine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError
from core.preprocessing import PreprocessSpec
from core.strict import parse_strict, to_jsonable
from training.trainer.config import apply_overrides, read_yaml

# encoder (embed_dim, depth, num_heads) and the light decoder (dim, depth, heads) per size;
# heads = width / 64 for every encoder, so load_retfound_model's default num_heads fits.
SIZES: dict[str, dict[str, int]] = {
    "test": dict(embed_dim=64, depth=2, num_heads=1, patch_size=16,
                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1),
    "vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16,
                             decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # the demo ViT tiers' encoder (demo_retfound.yaml): ViT-Tiny's width at half its depth
    "vit_tiny_d6_patch16": dict(embed_dim=192, depth=6, num_heads=3, patch_size=16,
                                decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16,
                              decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    # RETFound / MAE's mae_vit_large_patch16_dec512d8b
    "vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16,
                              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}
SizeName = Literal["test", "vit_tiny_patch16", "vit_tiny_d6_patch16", "vit_small_patch16", "vit_base_patch16",
                   "vit_large_patch16"]


@dataclass(frozen=True)
class MAEDataConfig:
    """Unlabelled photos: folders, CSV files, zip files and ``synthetic:N[:seed]``, mixed."""

    sources: tuple[str, ...] = ("synthetic:1000",)
    synthetic_seed: int = 0  # for "synthetic:N" without its own seed
    synthetic_size: int = 384  # height of generated photos (width 4/3 of it)
    csv_column: str | None = None  # None: the first of path, file, filename, image, id_code
    csv_images: str = ""  # folder of the listed files, relative to the CSV
    csv_suffix: str = ""  # appended to each listed name (Kaggle's ids have no extension)
    require_field: bool = True  # skip photos without a detectable fundus field (counted)
    cache_dir: str | None = "data/cache/mae"  # None: hold the crops in memory
    cache_side: int | None = None  # side of the cached field crops; default 1.5 x input_size
    num_workers: int = 2  # DataLoader workers (the one-time cache build uses every core)
    limit: int | None = None  # first N photos of each source (smoke runs)
    augment: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area fraction, as MAE
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    hflip: bool = True
    rotate_deg: float = 15.0  # small rotation: |angle| <= this
    colour_jitter: float = 0.1  # brightness and contrast +-, saturation +- half of it


@dataclass(frozen=True)
class MAEModelConfig:
    size: SizeName = "vit_tiny_patch16"
    decoder_embed_dim: int | None = None  # None: the size's light default
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    init: str | None = None  # a RETFound-layout .pth to start from (domain-adaptive pretraining)
    grad_checkpointing: bool = False


@dataclass(frozen=True)
class MAEOptimConfig:
    epochs: int = 100
    batch_size: int = 32  # per process
    blr: float = 1.5e-4  # lr = blr x batch x accum_iter x world_size / 256
    lr: float | None = None  # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05  # not on norms, biases, pos_embed, cls_token, mask_token
    warmup_epochs: float = 10.0
    accum_iter: int = 1
    clip_grad: float | None = None  # MAE pretraining does not clip
    amp: bool = True  # bf16 autocast on CUDA (fp16 + GradScaler without bf16); CPU runs fp32
    save_every: int = 20  # also keep checkpoint-<epoch>.pth every N epochs (and the last)


@dataclass(frozen=True)
class MAEConfig:
    run_name: str = "mae"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = True
    wandb: bool = False
    data: MAEDataConfig = MAEDataConfig()
    model: MAEModelConfig = MAEModelConfig()
    optim: MAEOptimConfig = MAEOptimConfig()
    preprocessing: PreprocessSpec = PreprocessSpec()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    def arch(self) -> dict[str, int]:
        """Encoder and decoder sizes with the decoder overrides applied."""
        arch = dict(SIZES[self.model.size])
        for key in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            value = getattr(self.model, key)
            if value is not None:
                arch[key] = value
        return arch


def load_mae_config(path: str | Path | None, overrides: list[str] | None = None) -> MAEConfig:
    """YAML file (optional) + "a.b=value" overrides (YAML-typed) -> validated MAEConfig."""
    data = read_yaml(path)
    apply_overrides(data, overrides, example="optim.blr=1e-4")
    cfg = parse_strict(MAEConfig, data, source=str(path or "config"), error=ConfigError)
    check_config(cfg)
    return cfg


def check_config(cfg: MAEConfig) -> None:
    m, o, arch = cfg.model, cfg.optim, cfg.arch()
    if not 0.0 < m.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio={m.mask_ratio} must be in (0, 1); MAE uses 0.75.")
    if cfg.preprocessing.input_size % arch["patch_size"]:
        raise ConfigError(f"preprocessing.input_size={cfg.preprocessing.input_size} is not a "
                          f"multiple of the patch size {arch['patch_size']}.")
    if arch["decoder_embed_dim"] % arch["decoder_num_heads"]:
        raise ConfigError(f"decoder_embed_dim={arch['decoder_embed_dim']} is not divisible by "
                          f"decoder_num_heads={arch['decoder_num_heads']}.")
    if o.epochs < 1 or o.batch_size < 1 or o.accum_iter < 1 or o.save_every < 1:
        raise ConfigError("optim.epochs, batch_size, accum_iter and save_every must be >= 1.")
    lo, hi = cfg.data.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"data.crop_scale={cfg.data.crop_scale} must satisfy 0 < lo <= hi <= 1.")
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty; list folders, CSVs, zips or synthetic:N.")


def save_mae_config(cfg: MAEConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
