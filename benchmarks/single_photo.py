"""One photo, end to end on this machine: decode + quality + preprocess + grade, per tier.

    python -m benchmarks.single_photo [--repeats 7] [--archs resnet50 resnet18 vit_large]
        [--bundles models/eyepacs-lite0 models/demo-retfound models/demo-lora]

Bundles with random weights are built in a temp folder (sizes are what matter for speed): the
baseline CNNs at 224 px, RETFound ViT-L/16 at 224 px, and three LoRA adapters over one ViT-L
base. For each, the median wall time of Predictor.predict(path) on a 1536x1024 JPEG (model
already loaded), next to a plain reference doing the same work naively in the same run
(PIL open, full decode, resize to 224, forward). Also the cache's memory with every tier loaded,
showing that the three LoRA bundles share one ViT-L. Targets (PERFORMANCE.md, 2-core CPU):
baseline under 300 ms, ViT-L under 1 s. The ViT-L row is repeated with the opt-in CPU int8 path
(core/quantize.py, DR_CPU_INT8=1); --agreement-bundle reports how often int8 and fp32 give the
same grade with a trained ViT bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.archs.lora import RETFoundLoRA
from core.archs.registry import build_model
from core.archs.tiers import get_tier
from core.bundle import Bundle, build_bundle_model, save_bundle
from core.cache import ModelCache
from core.lora_bundle import save_lora_bundle
from core.manifest import ArchitectureSpec, ExplanationSpec, Manifest, Provenance, WeightsSpec
from core.predict import Predictor
from core.preprocessing import PreprocessSpec
from core.synthetic import generate_fundus

VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, img_size=224)


def _bundle(folder: Path, name: str, arch: ArchitectureSpec, layer: str, kind: str) -> Bundle:
    model = build_model(arch.builder, arch.kwargs)
    manifest = Manifest(name=name, version="bench", tier="baseline" if kind == "cnn" else "retfound",
                        created="-", architecture=arch, preprocessing=PreprocessSpec(),
                        explanation=ExplanationSpec(layer, arch=kind),
                        weights=WeightsSpec("weights.safetensors", ""),
                        provenance=Provenance("random weights (benchmark)"), demo=True)
    return save_bundle(folder / name, manifest, model.state_dict())


def _lora(folder: Path, base: Bundle, names: list[str]) -> list[Bundle]:
    out = []
    for name in names:
        host = RETFoundLoRA.from_model(build_bundle_model(base), 5)
        manifest = dataclasses.replace(base.manifest, name=name, tier="lora",
                                       base_bundle=base.path.name)
        out.append(save_lora_bundle(folder / name, host, manifest))
    return out


def _plain(model: torch.nn.Module, path: Path, side: int = 224) -> None:
    img = Image.open(path).convert("RGB").resize((side, side))
    x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        model(x)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def agreement(path: str, n: int) -> str:
    """int8 vs fp32 grades of a trained ViT bundle on fresh synthetic photos (seed 4242)."""
    from core.bundle import load_bundle

    bundle = load_bundle(path)
    cache = ModelCache()
    fp32 = Predictor(bundle, "cpu", cache=cache, cpu_int8=False)
    int8 = Predictor(bundle, "cpu", cache=cache, cpu_int8=True)
    photos = [generate_fundus(i % 5, 4242 + i, size=512).image for i in range(n)]
    a = [p for p in fp32.predict_batch(photos) if p.gradable]
    b = [p for p in int8.predict_batch(photos) if p.gradable]
    same_grade = sum(x.grade == y.grade for x, y in zip(a, b, strict=True))
    same_ref = sum(x.referable == y.referable for x, y in zip(a, b, strict=True))
    dp = max(float(np.abs(np.subtract(x.probs, y.probs)).max()) for x, y in zip(a, b, strict=True))
    return (f"\nint8 vs fp32 on {bundle.name}, {len(a)} gradable synthetic photos: same grade "
            f"{same_grade}/{len(a)}, same referable decision {same_ref}/{len(a)}, largest "
            f"probability difference {dp:.3f}.")


def shipped_rows(paths: list[str], photo: Path, cache: ModelCache,
                 repeats: int) -> list[tuple[str, str, float, float]]:
    """Trained bundles timed as served (the mirror averaged where the bundle was calibrated so)
    and with one forward pass, beside the same plain reference: what flip TTA costs."""
    from core.bundle import load_bundle

    rows = []
    for path in paths:
        bundle = load_bundle(path)
        served_tta = bundle.manifest.calibration.flip_tta
        with Predictor(bundle, "cpu", cache=cache, cpu_int8=False).loaded.use() as model:
            side = bundle.manifest.preprocessing.input_size
            plain = _median_ms(lambda m=model, s=side: _plain(m, photo, s), repeats)
        for tta in dict.fromkeys((served_tta, False)):
            pred = Predictor(bundle, "cpu", cache=cache, cpu_int8=False, tta=tta)
            label = "as served, flip TTA" if tta else ("as served" if not served_tta
                                                       else "one pass, not as served")
            rows.append((f"{bundle.name} {bundle.manifest.version} ({label})",
                         bundle.manifest.tier, _median_ms(lambda q=pred: q.predict(photo),
                                                          repeats), plain))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50", "vit_large"])
    p.add_argument("--agreement-bundle", default=None,
                   help="a trained ViT bundle: int8 vs fp32 agreement on synthetic photos")
    p.add_argument("--agreement-n", type=int, default=100)
    p.add_argument("--bundles", nargs="*", default=[],
                   help="trained bundles (e.g. models/eyepacs-lite0), timed as served and with "
                        "one forward pass")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="dr-single-"))
    photo = tmp / "photo.jpg"
    Image.fromarray(generate_fundus(2, 5, size=1024, width=1536).image).save(photo, quality=92)
    cache = ModelCache(max_bytes=64 * 2**30)
    rows = []
    for arch in args.archs:
        if arch == "vit_large":
            spec = ArchitectureSpec("retfound_vit", {"num_classes": 5, **VIT_L})
            bundles = [_bundle(tmp, "vit_large", spec, "blocks.23.norm1", "vit")]
            bundles += _lora(tmp, bundles[0], ["lora-a", "lora-b", "lora-c"])
        else:
            spec = ArchitectureSpec("timm_classifier", {"model_name": arch, "num_classes": 5})
            bundles = [_bundle(tmp, arch, spec, "backbone.layer4", "cnn")]
        for bundle in bundles:
            pred = Predictor(bundle, "cpu", cache=cache, cpu_int8=False)
            ours = _median_ms(lambda p=pred: p.predict(photo), args.repeats)
            with pred.loaded.use() as model:
                plain = _median_ms(lambda: _plain(model, photo), args.repeats)
            rows.append((bundle.name, bundle.manifest.tier, ours, plain))
            if get_tier(bundle.manifest.tier).int8:  # the opt-in int8 path, same plain reference
                int8 = Predictor(bundle, "cpu", cache=cache, cpu_int8=True)
                rows.append((f"{bundle.name} (DR_CPU_INT8=1)", bundle.manifest.tier,
                             _median_ms(lambda p=int8: p.predict(photo), args.repeats), plain))
    rows += shipped_rows(args.bundles, photo, cache, args.repeats)
    print(f"\nOne 1536x1024 JPEG, {os.cpu_count()} CPU cores, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats}:\n")
    print("| bundle | tier | ours: decode+quality+preprocess+grade ms | plain: PIL+resize+forward ms |")
    print("|---|---|---|---|")
    for name, tier, ours, plain in rows:
        print(f"| {name} | {tier} | {ours:.0f} | {plain:.0f} |")
    if args.agreement_bundle:
        print(agreement(args.agreement_bundle, args.agreement_n))
    print(f"\nCache with all of the above loaded: {cache.total_bytes() / 2**20:.0f} MiB in "
          f"{len(cache.loaded_modules())} loaded modules (LoRA bundles share their base). "
          f"Load average {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
