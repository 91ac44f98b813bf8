"""Batch screening throughput vs decoding alone, on the same machine in the same run.

    python -m benchmarks.screening [--n 500] [--model models/<bundle>] [--workers N] [--size 512]

Writes N synthetic fundus JPEGs (core.synthetic, `--size` px) to a temp folder, then measures:

- `decode only`: `core.images.decode_image(min_side=2*input_size)` over every file, through a
  Pool of the same worker count (the ceiling: what reading the photos alone allows);
- `prepare only`: decode + field + quality + preprocess (the worker side of screening);
- `screening`: `core.screening.screen` end to end (workers + batched model + SQLite commits).

Without --model, a random-weights efficientnet_b0 bundle at 224 px is built in the temp folder
(an untrained stand-in of baseline size: speed only, its grades mean nothing). Peak memory is
the main process's max RSS (resource.getrusage) and the workers' max RSS. PERFORMANCE.md's
target (on a GPU): screening >= 70% of decoding alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def write_photos(folder: Path, n: int, size: int) -> list[Path]:
    from core.synthetic import generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        f = generate_fundus(i % 5, seed=i, size=size)
        path = folder / f"{1000 + i // 2}_{'left' if i % 2 else 'right'}.jpg"
        cv2.imwrite(str(path), f.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def stand_in_bundle(folder: Path):
    import torch

    from core.archs.registry import build_model
    from core.bundle import save_bundle
    from core.manifest import ArchitectureSpec, ExplanationSpec, Manifest, Provenance, WeightsSpec
    from core.preprocessing import PreprocessSpec

    arch = ArchitectureSpec("timm_classifier", {"model_name": "efficientnet_b0",
                                                "num_classes": 5, "dropout_rate": 0.0})
    torch.manual_seed(0)
    model = build_model(arch.builder, arch.kwargs).eval()
    manifest = Manifest(
        name="bench-effnet-b0", version="0", tier="baseline", created="2026-01-01T00:00:00Z",
        architecture=arch, preprocessing=PreprocessSpec(input_size=224),
        explanation=ExplanationSpec("backbone.conv_head"),
        weights=WeightsSpec("weights.safetensors", ""), provenance=Provenance("random"),
        demo=True)
    return save_bundle(folder / "bench", manifest, model.state_dict())


_SIDE = 448


def _decode(path: str) -> int:
    from core.images import decode_image

    return decode_image(path, min_side=_SIDE).shape[0]


def _init() -> None:
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _pool_rate(fn, paths: list[str], workers: int) -> tuple[float, float]:
    """(photos/s, max RSS MB of a worker) through a pool of single-threaded workers."""
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, _init) as pool:
        pool.map(_noop, range(workers))  # start-up is not throughput
        start = time.perf_counter()
        pool.map(fn, paths, chunksize=4)
        rate = len(paths) / (time.perf_counter() - start)
        rss = max(pool.map(_rss_mb, range(workers)))
    return rate, rss


def _noop(_: int) -> None:
    return None


def _rss_mb(_: int) -> float:
    time.sleep(0.05)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prepare(path: str) -> str:
    from core.screening import Task, _worker_task

    return _worker_task(Task(Path(path).name, path=path)).content_hash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", help="bundle folder (default: random efficientnet_b0 stand-in)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--size", type=int, default=512, help="side of the synthetic photos")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    from core.bundle import load_bundle
    from core.screening import screen
    from core.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        paths = [str(p) for p in write_photos(tmp_path / "photos", args.n, args.size)]
        print(f"wrote {args.n} photos of {args.size} px in {time.perf_counter() - t0:.0f} s")
        bundle = load_bundle(args.model) if args.model else stand_in_bundle(tmp_path)
        global _SIDE
        _SIDE = 2 * bundle.manifest.preprocessing.input_size
        decode_rate, decode_rss = _pool_rate(_decode, paths, args.workers)
        prep_rate, prep_rss = _prep_rate(paths, bundle, args.workers)
        store = Store(tmp_path / "bench.sqlite")
        from core.predict import Predictor

        Predictor(bundle)  # load the model first: start-up is not throughput
        start = time.perf_counter()
        run_id = screen(tmp_path / "photos", [bundle], store, workers=args.workers,
                        batch_size=args.batch_size)
        screen_s = time.perf_counter() - start
        screen_rate = args.n / screen_s
        assert len(store.files_for_run(run_id)) == args.n
        main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print()
    plural = "s" if args.workers != 1 else ""
    print(f"| stage ({bundle.name}, {args.workers} worker{plural}, {os.cpu_count()} cores) "
          "| photos/s | vs decode only | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| decode only | {decode_rate:.1f} | 1.00 | {decode_rss:.0f} (worker) |")
    print(f"| prepare only (decode+field+quality+preprocess) | {prep_rate:.1f} | "
          f"{prep_rate / decode_rate:.2f} | {prep_rss:.0f} (worker) |")
    print(f"| screening end to end (incl. pool start) | {screen_rate:.1f} | "
          f"{screen_rate / decode_rate:.2f} | {main_rss:.0f} (main) |")
    print()
    print(f"n={args.n}, {args.size} px JPEGs, load average {os.getloadavg()[0]:.1f}; "
          f"screening took {screen_s:.1f} s.")


def _prep_rate(paths: list[str], bundle, workers: int) -> tuple[float, float]:
    from core.screening import PrepJob, _init_worker

    spec = bundle.manifest.preprocessing
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, _init_worker, (PrepJob((spec,)),)) as pool:
        pool.map(_noop, range(workers))
        start = time.perf_counter()
        pool.map(_prepare, paths, chunksize=4)
        rate = len(paths) / (time.perf_counter() - start)
        rss = max(pool.map(_rss_mb, range(workers)))
    return rate, rss


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
