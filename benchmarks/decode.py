"""Decode + crop + resize to 224 px: core.images against plain PIL, one core and all cores.

    python -m benchmarks.decode                 # defaults: 7 repeats, all cores
    python -m benchmarks.decode --repeats 3 --workers 2

Synthetic fundus-like photos (orange disc on black with noise) are written to a temp dir at
startup, so nothing here depends on data or on other modules being ready. Every path of a row is
measured in the same run; quote the ratios (PERFORMANCE.md). Paths:

- plain:  PIL.Image.open(f).convert("RGB").resize((224, 224))  (no crop, the naive reference)
- images: decode_image(f, min_side=448) + centre square crop + cv2 INTER_AREA resize to 224
- pipeline: decode_image(f, min_side=decode_min_side(spec)) + core.preprocessing.preprocess
  (field detection, crop, resize, normalise) when core.preprocessing provides it
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.images import decode_image

SIZE = 224
MIN_SIDE = 2 * SIZE
PHOTOS = {  # name -> (width, height, format, save kwargs)
    "PNG 2416x1736": (2416, 1736, "PNG", {}),
    "JPEG 4928x3264": (4928, 3264, "JPEG", {"quality": 90}),
    "JPEG 1024x1024": (1024, 1024, "JPEG", {"quality": 90}),
}


def make_fundus(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Bright orange disc on black with sensor-like noise (noise keeps PNGs realistically big)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    r = 0.46 * min(width, height)
    dist = np.sqrt((yy - height / 2) ** 2 + (xx - width / 2) ** 2)
    shade = np.clip(1.1 - 0.5 * dist / r, 0, 1)[..., None] * (dist < r)[..., None]
    img = shade * np.array([230.0, 110.0, 40.0]) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photos(folder: Path) -> dict[str, Path]:
    out = {}
    for i, (name, (w, h, fmt, kwargs)) in enumerate(PHOTOS.items()):
        path = folder / f"photo{i}.{fmt.lower()}"
        Image.fromarray(make_fundus(w, h, seed=i)).save(path, fmt, **kwargs)
        out[name] = path
    return out


# ---------------------------------------------------------------- the paths


def plain_pil(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE)))


def images_centre_crop(path: Path) -> np.ndarray:
    rgb = decode_image(path, min_side=MIN_SIDE)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top : top + side, left : left + side]
    return cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _pipeline() -> Callable[[Path], object] | None:
    """core.preprocessing's own crop+resize when it exists (preprocess_image or preprocess)."""
    try:
        import core.preprocessing as pp
    except Exception:
        return None
    spec = pp.PreprocessSpec(input_size=SIZE)
    step = getattr(pp, "preprocess_image", None) or getattr(pp, "preprocess", None)
    if step is None:
        return None
    min_side = pp.decode_min_side(spec) if hasattr(pp, "decode_min_side") else MIN_SIDE

    def run(path: Path) -> object:
        return step(decode_image(path, min_side=min_side), spec)

    return run


PIPELINE = _pipeline()
PATHS: dict[str, Callable[[Path], object]] = {"plain": plain_pil, "images": images_centre_crop}
if PIPELINE is not None:
    PATHS["pipeline"] = PIPELINE


# ---------------------------------------------------------------- timing


def _single_thread() -> None:
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def one_core_rate(fn: Callable[[Path], object], path: Path, repeats: int) -> float:
    """Photos per second from the median of `repeats` single-photo timings."""
    fn(path)  # warm-up: imports, page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def _work(job: tuple[str, str]) -> None:
    PATHS[job[0]](Path(job[1]))


def pool_rate(pool, path_name: str, path: Path, n_photos: int, repeats: int) -> float:
    """Photos per second through the pool, median over repeats."""
    jobs = [(path_name, str(path))] * n_photos
    pool.map(_work, jobs[: len(jobs) // 2 or 1], chunksize=1)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pool.map(_work, jobs, chunksize=1)
        rates.append(n_photos / (time.perf_counter() - t0))
    return statistics.median(rates)


def run(repeats: int, workers: int) -> str:
    _single_thread()
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp))
        rows = []
        with Pool(workers, initializer=_single_thread) as pool:
            for name, path in photos.items():
                mb = path.stat().st_size / 1e6
                plain_rate = None
                for path_name, fn in PATHS.items():
                    one = one_core_rate(fn, path, repeats)
                    many = pool_rate(pool, path_name, path, 4 * workers, max(3, repeats // 2))
                    plain_rate = plain_rate or one
                    rows.append(
                        f"| {name} ({mb:.1f} MB) | {path_name} | {1000 / one:.1f} | {one:.1f} "
                        f"| {many:.1f} | {one / plain_rate:.2f}x |"
                    )
    head = (
        f"| photo | path | ms/photo, 1 core | photos/s, 1 core | photos/s, {workers} workers "
        "| 1-core speed vs plain |\n|---|---|---|---|---|---|"
    )
    crop = "core.preprocessing pipeline" if PIPELINE is not None else "not available"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    notes = (
        f"\ncores: {os.cpu_count()} (load average {load}), workers: {workers}, "
        f"repeats: {repeats} (medians); "
        f"pipeline row: {crop}; Pillow {Image.__version__}, OpenCV {cv2.__version__}"
    )
    return "\n".join([head, *rows]) + "\n" + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(run(args.repeats, args.workers))


if __name__ == "__main__":
    main()
