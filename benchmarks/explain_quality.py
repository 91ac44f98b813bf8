"""Pointing game: does the heatmap's peak fall on a lesion? Per method, against random maps.

    python -m benchmarks.explain_quality [--bundle models/demo-baseline] [--n 60] [--seed 777]

Fresh synthetic referable photos (grades 2-4, a seed the demo models never saw) go through the
bundle's Predictor; for each explanation method the peak of the heatmap (model-input square) is
mapped back to photo pixels through the field crop and counted a hit when it lands inside the
union of lesion masks, dilated by a tolerance of 3% of the field radius. The random-map rate is
the chance that a uniformly random point of the field is a hit (exact, from the masks), i.e.
what a map that knows nothing would score. Research check only: these are synthetic lesions.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from core.bundle import load_bundle
from core.cache import ModelCache
from core.explain import METHODS
from core.predict import Predictor
from core.preprocessing import crop_box
from core.synthetic import generate_fundus

TOLERANCE = 0.03  # of the field radius


def peak_in_photo(heatmap: np.ndarray, field) -> tuple[int, int]:
    """Peak of a model-input heatmap, in photo pixel coordinates."""
    v, u = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    x0, y0, side = crop_box(field)
    scale = side / heatmap.shape[0]
    return int(x0 + (u + 0.5) * scale), int(y0 + (v + 0.5) * scale)


def hit_mask(sample, radius: float) -> np.ndarray:
    tol = max(1, int(round(TOLERANCE * radius)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    return cv2.dilate(sample.lesion_mask.astype(np.uint8), kernel) > 0


def field_mask(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def evaluate(bundle_path: str, n: int, seed: int, size: int, methods: list[str],
             layer: str | None = None) -> dict:
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle, "cpu", cache=ModelCache())
    hits = {m: 0 for m in methods}
    seconds = {m: 0.0 for m in methods}
    chance, used = [], 0
    for i in range(n):
        sample = generate_fundus(2 + i % 3, seed + i, size=size)
        prepared = predictor.prepare(sample.image)
        if not prepared.quality.gradable or not sample.lesion_mask.any():
            continue
        used += 1
        target = hit_mask(sample, sample.field[2])
        inside = field_mask(target.shape, *sample.field)
        chance.append(float((target & inside).sum() / inside.sum()))
        for method in methods:
            t = time.perf_counter()
            exp = predictor.explain(prepared, method=method, target="referable", layer=layer)
            seconds[method] += time.perf_counter() - t
            x, y = peak_in_photo(exp.heatmap, prepared.pre.field)
            if 0 <= y < target.shape[0] and 0 <= x < target.shape[1] and target[y, x]:
                hits[method] += 1
    return {"bundle": bundle.name, "n": used, "chance": float(np.mean(chance)) if chance else 0.0,
            "rates": {m: hits[m] / used for m in methods} if used else {},
            "ms": {m: 1000 * seconds[m] / max(used, 1) for m in methods}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", nargs="+", default=["models/demo-baseline"])
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--layer", default=None, help="override the bundle's target layer")
    args = p.parse_args(argv)
    print("| bundle | method | pointing-game hit rate | random-map rate | ratio | ms/map | n |")
    print("|---|---|---|---|---|---|---|")
    for path in args.bundle:
        arch = load_bundle(path).manifest.explanation.arch
        methods = [m for m in METHODS if m != "scorecam" and (m != "attention_rollout" or arch == "vit")]
        r = evaluate(path, args.n, args.seed, args.size, methods, args.layer)
        for m in methods:
            print(f"| {r['bundle']} | {m} | {r['rates'][m]:.0%} | {r['chance']:.0%} | "
                  f"{r['rates'][m] / max(r['chance'], 1e-9):.1f}x | {r['ms'][m]:.0f} | {r['n']} |")
    print(f"\nHit = heatmap peak inside the lesion masks dilated by {TOLERANCE:.0%} of the field "
          "radius; target 'referable' (grades 2-4); synthetic photos of grades 2-4; layer "
          f"{args.layer or 'from each bundle'}.")


if __name__ == "__main__":
    main()
