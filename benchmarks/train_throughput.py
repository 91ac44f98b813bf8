"""Training throughput per tier: end to end (data included) vs compute-only vs a plain loop.

    python -m benchmarks.train_throughput                       # CPU-sized defaults
    python -m benchmarks.train_throughput --full --device cuda  # resnet50 / ViT-L at 224 px, GPU
    python -m benchmarks.train_throughput --full --device cuda --lora-epochs 20 --n 3662

For each tier, in the same run and on the same model:
- compute-only: random tensors already on the device, forward + backward + optimiser step;
- ours: the project's path (image cache built once, CachedFundusDataset with augmentation,
  DataLoader workers, AMP on GPU, channels_last for CNNs);
- plain: fp32, a Dataset that decodes the original PNG and resizes it every step (what the
  seed documents' trainers did), same batch size and workers.
The cache build time is reported on its own (it is paid once). `--lora-epochs E` also times a
whole LoRA fine-tune end to end through `training.trainer.run` (cache build included).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.archs.baseline import DRClassifier
from core.archs.lora import RETFoundLoRA
from core.archs.retfound import build_retfound_vit
from core.devices import resolve_device
from core.preprocessing import PreprocessSpec
from training.trainer.config import DataConfig
from training.trainer.data import CachedFundusDataset, EpochSampler
from training.trainer.datasets import load_records
from training.trainer.image_cache import build_cache

SMALL = {"baseline": "resnet18", "vit": dict(embed_dim=192, depth=6, num_heads=3)}
FULL = {"baseline": "resnet50", "vit": dict(embed_dim=1024, depth=24, num_heads=16)}


def _cnn(sizes: dict, size: int) -> torch.nn.Module:
    return DRClassifier(sizes["baseline"], pretrained=False)


def _vit(sizes: dict, size: int) -> torch.nn.Module:
    return build_retfound_vit(num_classes=5, img_size=size, **sizes["vit"])


def _lora(sizes: dict, size: int) -> torch.nn.Module:
    return RETFoundLoRA.from_model(_vit(sizes, size), 5)


def _vit_name(sizes: dict) -> str:
    return f"ViT d{sizes['vit']['embed_dim']} x{sizes['vit']['depth']}"


# tier -> (builder, table name, convolutional: channels_last on CUDA)
MODELS = {
    "baseline": (_cnn, lambda sizes: sizes["baseline"], True),
    "retfound": (_vit, _vit_name, False),
    "lora": (_lora, lambda sizes: _vit_name(sizes) + " + LoRA r8 qkv", False),
}


def make_model(tier: str, full: bool, size: int = 224) -> torch.nn.Module:
    return MODELS[tier][0](FULL if full else SMALL, size)


class PlainPNGDataset(Dataset):
    """The reference: decode the original file every time, resize, fp32 tensor."""

    def __init__(self, paths: list[Path], grades: list[int], size: int) -> None:
        self.paths, self.grades, self.size = paths, grades, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = Image.open(self.paths[i]).convert("RGB").resize((self.size, self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, self.grades[i]


def timed_steps(model, batches, device, amp: bool, channels_last: bool, steps: int,
                warmup: int = 2) -> float:
    """Images per second over `steps` optimiser steps after `warmup` steps."""
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    seen, start = 0, None
    for k, (x, y) in enumerate(batches):
        if k == warmup:
            _sync(device)
            start, seen = time.perf_counter(), 0
        if k >= warmup + steps:
            break
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=amp and dtype is not None):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += x.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - start) if start else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_batches(batch: int, size: int):
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 5, (batch,))
    while True:
        yield x, y


def _cycle(loader):
    while True:
        yield from loader


def run(args) -> list[dict]:
    device = resolve_device(args.device)
    data_dir = Path(args.data or tempfile.mkdtemp(prefix="dr-bench-"))
    if not (data_dir / "train.csv").is_file():
        from core.synthetic import write_aptos_dataset

        t = time.perf_counter()
        write_aptos_dataset(data_dir, args.n, seed=0, size=args.height, width=args.width,
                            workers=os.cpu_count() or 1)
        print(f"generated {args.n} images {args.width}x{args.height} in {time.perf_counter() - t:.0f} s")
    records, _ = load_records(DataConfig(preset="aptos", csv=str(data_dir / "train.csv")))
    spec = PreprocessSpec(input_size=args.size)
    t = time.perf_counter()
    cache = build_cache(records, spec, data_dir / "cache", progress=False)
    cache_s = time.perf_counter() - t
    grades = [r.grade for r in records]
    rows = []
    for tier in args.tiers:
        model = make_model(tier, args.full, args.size)
        cnn = MODELS[tier][2]
        compute = timed_steps(model, _random_batches(args.batch, args.size), device, True, cnn,
                              args.steps)
        ours_ds = CachedFundusDataset(cache.folder, range(len(records)), grades, spec,
                                      train=True, seed=0)
        ours = DataLoader(ours_ds, batch_size=args.batch, sampler=EpochSampler(grades, 0),
                          num_workers=args.workers, pin_memory=device.type == "cuda",
                          persistent_workers=args.workers > 0, drop_last=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ours_ips = timed_steps(model, _cycle(ours), device, True, cnn, args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        plain = DataLoader(PlainPNGDataset([r.path for r in records], grades, args.size),
                           batch_size=args.batch, shuffle=True, num_workers=args.workers,
                           drop_last=True)
        plain_ips = timed_steps(model, _cycle(plain), device, False, False,
                                max(2, args.steps // 2))
        rows.append({"tier": tier, "model": _name(tier, args.full), "compute": compute,
                     "ours": ours_ips, "plain": plain_ips, "peak_gib": peak})
        del model
    _print(rows, args, device, cache_s, len(records))
    if args.lora_epochs:
        _time_lora_finetune(args, data_dir)
    return rows


def _name(tier: str, full: bool) -> str:
    return MODELS[tier][1](FULL if full else SMALL)


def _print(rows, args, device, cache_s, n) -> None:
    card = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nTraining throughput, {args.size} px, batch {args.batch}, {args.workers} loader "
          f"workers, device: {card}; {n} images {args.width}x{args.height} PNG; cache built "
          f"once in {cache_s:.1f} s\n")
    print("| tier | model | compute-only img/s | ours img/s | ours / compute | plain fp32 "
          "decode-every-step img/s | ours / plain | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['tier']} | {r['model']} | {r['compute']:.1f} | {r['ours']:.1f} | "
              f"{r['ours'] / r['compute']:.0%} | {r['plain']:.1f} | {r['ours'] / r['plain']:.1f}x "
              f"| {peak} |")
    print("\nTarget (GPU): ours >= 80% of compute-only for every tier. "
          f"Load average: {os.getloadavg()[0]:.1f}")


def _time_lora_finetune(args, data_dir: Path) -> None:
    from training.trainer.config import load_config
    from training.trainer.run import run as train_run

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        from core.archs.retfound import retfound_builder_kwargs
        from core.bundle import save_bundle
        from core.manifest import (
            ArchitectureSpec,
            ExplanationSpec,
            Manifest,
            Provenance,
            WeightsSpec,
        )

        vit = make_model("retfound", args.full, args.size)
        save_bundle(base, Manifest(
            name="bench-base", version="0", tier="retfound", created="-",
            architecture=ArchitectureSpec("retfound_vit", retfound_builder_kwargs(vit)),
            preprocessing=PreprocessSpec(input_size=args.size),
            explanation=ExplanationSpec(f"blocks.{len(vit.blocks) - 1}.norm1", arch="vit"),
            weights=WeightsSpec("weights.safetensors", ""), provenance=Provenance("random"),
            demo=True), vit.state_dict())
        cfg = load_config(None, [f"data.csv={data_dir / 'train.csv'}", "data.preset=aptos",
                                 f"data.cache_dir={tmp}/cache", f"out_dir={tmp}/runs",
                                 f"model.checkpoint_path={base}", "model.tier=lora",
                                 f"optim.epochs={args.lora_epochs}", f"optim.batch_size={args.batch}",
                                 f"data.num_workers={args.workers}", "tensorboard=false",
                                 f"preprocessing.input_size={args.size}", "optim.patience=1000"])
        t = time.perf_counter()
        train_run(cfg, progress=False)
        print(f"\nLoRA fine-tune, {args.lora_epochs} epochs on {args.n} images, end to end "
              f"(cache build included): {time.perf_counter() - t:.0f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiers", nargs="+", default=["baseline", "retfound", "lora"])
    p.add_argument("--full", action="store_true", help="resnet50 / ViT-L (GPU sizes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--width", type=int, default=2416)
    p.add_argument("--height", type=int, default=1736)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data", default=None, help="reuse an APTOS-layout folder")
    p.add_argument("--lora-epochs", type=int, default=0)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
