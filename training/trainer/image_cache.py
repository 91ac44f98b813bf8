"""The one-time preprocessed cache: decode + field crop once, then epochs read small arrays.

Decoding a 5 MB APTOS PNG costs ~100 ms of CPU; a GPU trains a ResNet50 at ~4,000 images/s.
So every image is decoded, cropped to its fundus field and reduced to the pre-augmentation
working size (2 x input) once, in parallel over all cores, into one uint8 memmap. The cache is
keyed by the preprocessing settings and the file list, and resumable: rows already done are
kept when a build is interrupted. Broken files become error rows, not crashes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import DRError
from core.images import decode_image
from core.preprocessing import PreprocessSpec, decode_min_side, prepare_work, work_side
from core.workers import worker_pool
from training.trainer.datasets import LabelledImage

CHUNK = 64  # rows per flush: bounds what an interruption can lose


@dataclass(frozen=True)
class ImageCache:
    """An opened cache: `images[i]` is record i's working crop; `ok[i]` False for broken files."""

    folder: Path
    images: np.ndarray  # (N, S, S, 3) uint8 memmap
    ok: np.ndarray  # (N,) bool
    errors: dict[str, str]

    def __len__(self) -> int:
        return len(self.ok)


def cache_key(records: Sequence[LabelledImage], spec: PreprocessSpec) -> str:
    """Changes when the settings that shape the working crop or any source file change."""
    h = hashlib.sha256()
    relevant = {k: v for k, v in asdict(spec).items() if k in ("input_size", "crop_to_field",
                                                               "ben_graham")}
    relevant["decode_min_side"] = decode_min_side(spec)
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for r in records:
        stat = r.path.stat()
        h.update(f"{r.path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}\n".encode())
    return h.hexdigest()[:20]


def build_cache(records: Sequence[LabelledImage], spec: PreprocessSpec, root: str | Path,
                workers: int | None = None, progress: bool = True) -> ImageCache:
    """Create or finish the cache for these records; returns it opened read-only."""
    folder = Path(root) / cache_key(records, spec)
    folder.mkdir(parents=True, exist_ok=True)
    side = work_side(spec)
    shape = (len(records), side, side, 3)
    images = _open_memmap(folder / "images.npy", shape)
    done = _load_flags(folder / "done.npy", len(records))
    errors = _load_errors(folder / "errors.json")
    todo = [i for i in range(len(records)) if not done[i]]
    workers = workers or os.cpu_count() or 1
    if todo:
        tasks = [(i, str(records[i].path), spec) for i in todo]
        bar = tqdm(total=len(todo), desc="building image cache", disable=not progress,
                   unit="img")
        with _pool(workers) as pool:
            results = pool.imap_unordered(_work_one, tasks, chunksize=4) if pool else map(
                _work_one, tasks)
            for n, (i, work, error) in enumerate(results, 1):
                if error is None:
                    images[i] = work
                else:
                    errors[records[i].id] = error
                done[i] = True
                bar.update(1)
                if n % CHUNK == 0:
                    _flush(folder, images, done, errors)
        bar.close()
        _flush(folder, images, done, errors)
    ok = np.array([r.id not in errors for r in records], dtype=bool)
    readonly = np.load(folder / "images.npy", mmap_mode="r")
    return ImageCache(folder, readonly, ok, errors)


def _work_one(task: tuple[int, str, PreprocessSpec]) -> tuple[int, np.ndarray | None, str | None]:
    index, path, spec = task
    try:
        rgb = decode_image(path, min_side=decode_min_side(spec))
        return index, prepare_work(rgb, spec).work, None
    except DRError as exc:
        return index, None, str(exc)


def _pool(workers: int):
    if workers <= 1:
        import contextlib

        return contextlib.nullcontext(None)
    return worker_pool(workers)


def _open_memmap(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if path.exists():
        arr = np.load(path, mmap_mode="r+")
        if arr.shape == shape:
            return arr
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def _load_flags(path: Path, n: int) -> np.ndarray:
    if path.exists():
        flags = np.load(path)
        if flags.shape == (n,):
            return flags
    return np.zeros(n, dtype=bool)


def _load_errors(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _flush(folder: Path, images: np.ndarray, done: np.ndarray, errors: dict[str, str]) -> None:
    """Pixels first, then the flags that vouch for them (atomic rename): a crash loses rows,
    never marks an unwritten row as done."""
    images.flush()
    tmp = folder / "done.tmp.npy"
    np.save(tmp, done)
    os.replace(tmp, folder / "done.npy")
    (folder / "errors.json").write_text(json.dumps(errors, indent=1))
