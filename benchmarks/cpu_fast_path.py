"""The CPU training fast path (optim.cpu_fast) against a plain fp32 NCHW step, in one run.

    python -m benchmarks.cpu_fast_path [--model tf_efficientnet_lite0] [--sizes 224 288 320]
                                       [--batch 16] [--steps 6] [--repeats 3]

For each input size, on the same model and the same random batch, timed round-robin so machine
noise hits every column alike (median of --repeats):
- plain: fp32, NCHW: a training step as written before the fast path (the reference);
- channels_last: fp32, channels_last model and input;
- fast path: what `training.trainer.loop.Trainer` runs under `optim.cpu_fast: true`, channels_last and
  bf16 autocast where `cpu_has_native_bf16()` (loss in fp32, as the loop computes it).
A step is forward + cross-entropy + backward + AdamW. Columns are images/s and the ratio to plain.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import timm
import torch

from training.trainer.loop import cpu_has_native_bf16

MODES = {"plain": (False, False), "channels_last": (True, False), "fast path": (True, True)}


def _step_rate(model, x, y, opt, bf16: bool, steps: int) -> float:
    """images/s over `steps` training steps, after two untimed ones."""
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return x.shape[0] * steps / (time.perf_counter() - start)


def _setup(name: str, size: int, batch: int, channels_last: bool):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).train()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, x, torch.randint(0, 5, (batch,)), opt


def measure(name: str, size: int, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median images/s per mode at one input size."""
    bf16 = cpu_has_native_bf16()
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    setups = {m: _setup(name, size, batch, cl) for m, (cl, _) in MODES.items()}
    for _ in range(repeats):
        for mode, (_, wants_bf16) in MODES.items():
            rates[mode].append(_step_rate(*setups[mode][:2], setups[mode][2], setups[mode][3],
                                          wants_bf16 and bf16, steps))
    return {m: float(np.median(v)) for m, v in rates.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 288, 320])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}")
    print("\n| input | plain fp32 NCHW img/s | channels_last img/s | fast path img/s | "
          "fast path / plain |\n|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(args.model, size, args.batch, args.steps, args.repeats)
        print(f"| {size} px | {r['plain']:.1f} | {r['channels_last']:.1f} | "
              f"{r['fast path']:.1f} | {r['fast path'] / r['plain']:.1f}x |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
