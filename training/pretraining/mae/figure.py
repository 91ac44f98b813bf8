"""MAE reconstruction figure, and the loss curve of a pretraining run.

    python -m training.pretraining.mae.figure --checkpoint runs/mae-tiny/mae_pretrained.pth \\
        --photos a.jpg b.png --synthetic 2 --out docs/mae_reconstruction.png

One row per photo: original | masked (75% of patches removed) | reconstruction with the visible
patches pasted back | reconstruction alone. Works for this trainer's checkpoints and for
RETFound's released MAE weights (sizes read off the tensors). Photos are prepared as the ViT
tiers prepare them (fundus field crop, ImageNet mean/std); synthetic photos come from
``core.synthetic``. With norm-pix loss the model predicts each masked patch up to its mean and
variance, so the figure rescales each predicted patch with the true patch's statistics (as MAE's
own figures do); the structure inside the patch is the model's.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from core.errors import DRError
from core.images import decode_image
from core.preprocessing import PreprocessSpec, preprocess
from core.synthetic import generate_fundus
from training.common.plots import pyplot, save_figure
from training.pretraining.mae.model import MaskedAutoencoderViT, build_mae, read_mae_checkpoint

COLUMNS = ("original", "masked", "reconstruction + visible", "reconstruction")


def load_mae(checkpoint: str | Path) -> tuple[MaskedAutoencoderViT, dict]:
    state, arch = read_mae_checkpoint(checkpoint)
    model = build_mae(arch, int(arch["img_size"]), bool(arch.get("norm_pix_loss", True)))
    model.load_state_dict(state, strict=True)
    return model.eval(), arch


@torch.no_grad()
def reconstruct(model: MaskedAutoencoderViT, imgs: torch.Tensor, mask_ratio: float = 0.75,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Normalised-space images (N, 3, S, S) for each figure column, plus the per-image loss."""
    generator = torch.Generator().manual_seed(seed)
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, generator)
    pred = model.forward_decoder(latent, ids_restore).float()
    target = model.patchify(imgs)
    per_patch = ((pred - model.target(imgs)) ** 2).mean(-1)
    loss = (per_patch * mask).sum(1) / mask.sum(1)
    if model.norm_pix_loss:  # back to pixels with each true patch's mean and std
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    p = model.patch_size
    m = mask.unsqueeze(-1).expand(-1, -1, p * p * 3)
    recon = model.unpatchify(pred)
    masked_px = model.unpatchify(m)
    return {"original": imgs, "masked": imgs * (1 - masked_px),
            "reconstruction + visible": imgs * (1 - masked_px) + recon * masked_px,
            "reconstruction": recon, "mask": masked_px, "loss": loss}


def _to_rgb(x: torch.Tensor, spec: PreprocessSpec) -> np.ndarray:
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def draw_figure(checkpoint: str | Path, photos: Sequence[str | Path], synthetic: int, out: str | Path,
                mask_ratio: float = 0.75, seed: int = 0) -> Path:
    model, arch = load_mae(checkpoint)
    spec = PreprocessSpec(input_size=int(arch["img_size"]))
    labels, tensors = [], []
    for photo in photos:
        tensors.append(preprocess(decode_image(photo, min_side=768), spec).tensor)
        labels.append(Path(photo).name)
    for i in range(synthetic):
        fundus = generate_fundus(i % 5, 1000 + seed + i, 384)
        tensors.append(preprocess(fundus.image, spec).tensor)
        labels.append(f"synthetic (grade {fundus.grade})")
    if not tensors:
        raise DRError("Nothing to draw: give --photos and/or --synthetic N.")
    cols = reconstruct(model, torch.stack(tensors), mask_ratio, seed)
    plt = pyplot()
    fig, axes = plt.subplots(len(tensors), 4, figsize=(10, 2.6 * len(tensors)), squeeze=False)
    for r, label in enumerate(labels):
        for c, name in enumerate(COLUMNS):
            img = _to_rgb(cols[name][r], spec)
            if name == "masked":  # removed patches in mid grey
                img = np.where(cols["mask"][r].permute(1, 2, 0).numpy() > 0, 0.5, img)
            ax = axes[r][c]
            ax.imshow(np.clip(img, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name if name != "masked" else f"masked ({mask_ratio:.0%})", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{label}\nloss {cols['loss'][r]:.3f}", fontsize=8)
    epoch = arch.get("epoch")
    fig.suptitle(f"MAE reconstruction: {Path(checkpoint).name}"
                 + (f", epoch {epoch}" if epoch is not None else "")
                 + (" (norm-pix: patches rescaled with their true mean/std)"
                    if model.norm_pix_loss else ""), fontsize=9)
    return save_figure(fig, out, dpi=100)


def loss_curve_png(steps_csv: Path, history: Sequence[dict], out: Path) -> Path:
    """Loss per optimizer step (and a running mean) beside img/s per epoch."""
    plt = pyplot()
    steps, losses = [], []
    if steps_csv.is_file():
        with open(steps_csv, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(10, 3.8))
    if losses:
        ax_l.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax_l.plot(steps[k - 1:], smooth, lw=1.5, label=f"running mean ({k})")
    ax_l.plot([r["step"] for r in history], [r["train_loss"] for r in history], "o", ms=3,
              label="epoch mean")
    ax_l.set_xlabel("optimizer step")
    ax_l.set_ylabel("masked-patch MSE")
    ax_l.set_title("MAE loss")
    ax_l.legend(fontsize=8)
    epochs = [r["epoch"] + 1 for r in history]
    ax_s.plot(epochs, [r["img_per_s"] for r in history], "o-", ms=3, label="img/s (wall)")
    ax_s.plot(epochs, [r["compute_img_per_s"] for r in history], "o-", ms=3,
              label="img/s (model steps)")
    ax_s.set_xlabel("epoch")
    ax_s.set_title("throughput")
    ax_s.legend(fontsize=8)
    return save_figure(fig, out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pretraining.mae.figure",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="an MAE .pth in RETFound's layout")
    parser.add_argument("--photos", nargs="*", default=[], help="fundus photos to reconstruct")
    parser.add_argument("--synthetic", type=int, default=0, help="also N synthetic photos")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    args = parser.parse_args(argv)
    try:
        path = draw_figure(args.checkpoint, args.photos, args.synthetic, args.out,
                           args.mask_ratio, args.seed)
    except DRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
