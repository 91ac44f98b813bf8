"""Inference and explanation latency: forward vs our Grad-CAM vs pytorch-grad-cam used as shipped.

    python -m benchmarks.inference --archs resnet50 efficientnet_b0 --repeats 10
    python -m benchmarks.inference --archs vit_large_patch16_224 --repeats 3

Random weights (pretrained=False), 224 px, fp32, torch threads = all cores. All three columns of a
row are measured in the same run, so the ratios hold on a noisy shared machine even when the
absolute milliseconds do not (PERFORMANCE.md). The target is our Grad-CAM <= 2.5x the forward.
On a GPU, ``--batch-sizes 1 64 256`` adds batched throughput columns (images/s) per batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
from pytorch_grad_cam import GradCAM

from core.explain import explain, resolve_layer, suggest_layer
from core.explain_vit import vit_reshape

TARGET_RATIO = 2.5
DEFAULT_ARCHS = ("resnet50", "efficientnet_b0", "vit_base_patch16_224", "vit_large_patch16_224")


@dataclass
class Row:
    arch: str
    params_m: float
    layer: str
    forward_ms: float
    ours_ms: float
    plain_ms: float | None
    min_ratio: float  # ours / forward from the fastest call of each: robust to a loaded machine
    throughput: dict[int, tuple[float, float]] = field(default_factory=dict)  # bs -> (fwd, cam)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], rounds: dict[str, int], device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """(median, min) ms per function, timed round-robin so noise hits every column alike.

    Each function is warmed up once; ``rounds[name]`` caps how often a slow one is repeated.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for i in range(max(rounds.values())):
        for name, fn in fns.items():
            if i >= rounds[name]:
                continue
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians, {name: min(t) for name, t in times.items()}


def _arch_kind(model: torch.nn.Module) -> str:
    return "vit" if hasattr(model, "patch_embed") and hasattr(model, "blocks") else "cnn"


def plain_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str, kind: str) -> object:
    """pytorch-grad-cam the tutorial way: every weight requires grad, a new CAM per call."""
    for p in model.parameters():
        p.requires_grad_(True)
    reshape = vit_reshape(model, tuple(x.shape[-2:])) if kind == "vit" else None
    with GradCAM(model=model, target_layers=[resolve_layer(model, layer)],
                 reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=None)
    model.zero_grad(set_to_none=True)
    return maps


def bench_arch(arch: str, args: argparse.Namespace, device: torch.device) -> Row:
    model = timm.create_model(arch, pretrained=False, num_classes=5).to(device).eval()
    kind = _arch_kind(model)
    layer = suggest_layer(model, kind, input_size=224)  # what a 224-px bundle's trainer writes
    x = torch.randn(1, 3, 224, 224, device=device)

    def forward(batch: torch.Tensor = x) -> object:
        with torch.inference_mode():
            return model(batch)

    def ours(batch: torch.Tensor = x) -> object:
        return explain(model, batch, method="gradcam", layer=layer, arch=kind)

    fns = {"forward": forward, "ours": ours}
    rounds = {"forward": args.repeats, "ours": args.repeats}
    if not args.skip_plain:
        fns["plain"] = lambda: plain_gradcam(model, x, layer, kind)
        rounds["plain"] = max(1, min(args.repeats, args.plain_repeats))
    ms, best = interleaved_ms(fns, rounds, device)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    row = Row(arch, n_params, layer, ms["forward"], ms["ours"], ms.get("plain"),
              best["ours"] / best["forward"])
    for bs in (b for b in args.batch_sizes if b > 1):
        xb = torch.randn(bs, 3, 224, 224, device=device)
        batched = {"f": lambda xb=xb: forward(xb), "c": lambda xb=xb: ours(xb)}
        bms, _ = interleaved_ms(batched, {"f": args.repeats, "c": args.repeats}, device)
        row.throughput[bs] = (bs * 1000 / bms["f"], bs * 1000 / bms["c"])
    return row


def render(rows: list[Row], batch_sizes: list[int]) -> str:
    extra = [b for b in batch_sizes if b > 1]
    head = ["model", "params (M)", "CAM layer", "forward ms", "our Grad-CAM ms",
            "ours / forward", "(of minima)", f"target <= {TARGET_RATIO}x",
            "plain pytorch-grad-cam ms", "plain / forward"]
    head += [h for b in extra for h in (f"forward img/s @{b}", f"our CAM img/s @{b}")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r.ours_ms / r.forward_ms
        cells = [r.arch, f"{r.params_m:.1f}", f"`{r.layer}`", f"{r.forward_ms:.1f}",
                 f"{r.ours_ms:.1f}", f"{ratio:.2f}x", f"{r.min_ratio:.2f}x",
                 "met" if ratio <= TARGET_RATIO else "MISSED",
                 "-" if r.plain_ms is None else f"{r.plain_ms:.1f}",
                 "-" if r.plain_ms is None else f"{r.plain_ms / r.forward_ms:.2f}x"]
        cells += [f"{v:.1f}" for b in extra for v in r.throughput[b]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plain-repeats", type=int, default=3,
                        help="repeats of the slow plain pytorch-grad-cam column (<= --repeats)")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1],
                        help="sizes > 1 add batched throughput columns (meant for a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    plain_reps = min(args.repeats, args.plain_repeats)
    print(f"device: {device} ({where or 'cpu'}), cores: {os.cpu_count()}, torch threads: "
          f"{torch.get_num_threads()}, torch {torch.__version__}, timm {timm.__version__}, "
          f"fp32, batch 1, 224 px, interleaved medians of {args.repeats} (plain: {plain_reps})\n")
    rows = []
    for arch in args.archs:
        rows.append(bench_arch(arch, args, device))
        print(render(rows[-1:], args.batch_sizes), flush=True)
    print("\n" + render(rows, args.batch_sizes))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load} on {os.cpu_count()} cores; "
          "a load above the core count inflates absolute times, less so the ratios.")


if __name__ == "__main__":
    main()
