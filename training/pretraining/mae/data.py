"""Unlabelled fundus photos for MAE pretraining: sources, a one-time crop cache, augmentations.

Sources (``data.sources``, mixed freely):

- a folder: every image file below it (recursive; core.images' suffixes), in sorted order;
- a ``.csv``: one photo per row, from ``data.csv_column`` (default: the first of path, file,
  filename, image, id_code), relative to the CSV's folder + ``data.csv_images``, with
  ``data.csv_suffix`` appended (Kaggle's ``trainLabels.csv``: ``csv_images: train``,
  ``csv_suffix: .jpeg``);
- a ``.zip``: every image member;
- a single image file;
- ``synthetic:N`` or ``synthetic:N:SEED``: N photos drawn by ``core.synthetic.generate_fundus``,
  photo i from its own seed (SEED, i) and an APTOS-like grade mix, so every run sees the same.

Every photo goes once through the project's own pipeline (``core.preprocessing.prepare_work``:
fundus field, square crop, black surround, optional Ben Graham) into a uint8 cache of field
crops (``data.cache_side``, default 1.5 x input): epochs then never decode or generate again.
Unreadable photos, and photos without a fundus field when ``data.require_field``, are skipped
and counted, never fatal. Augmentation is deterministic per (seed, epoch, photo), so a run
resumes exactly whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from core.errors import ConfigError
from core.images import SUPPORTED_SUFFIXES, decode_image
from core.preprocessing import PreprocessSpec, build_augment, decode_min_side, finish_tensor, prepare_work
from core.synthetic import APTOS_WEIGHTS, generate_fundus
from core.workers import worker_pool
from training.pretraining.mae.config import MAEConfig

CSV_COLUMNS = ("path", "file", "filename", "image", "id_code")
Item = tuple  # ("file", path) | ("zip", zip_path, member) | ("synthetic", seed, size, grade)


# ------------------------------------------------------------------ sources -> items


def list_items(cfg: MAEConfig) -> tuple[list[Item], Counter]:
    """Every photo the sources name, in a fixed order, and the count of rows skipped early."""
    items: list[Item] = []
    skipped: Counter = Counter()
    for source in cfg.data.sources:
        found = _source_items(str(source), cfg, skipped)
        items += found[: cfg.data.limit] if cfg.data.limit else found
    return items, skipped


def _source_items(source: str, cfg: MAEConfig, skipped: Counter) -> list[Item]:
    if source.startswith("synthetic:"):
        return _synthetic_items(source, cfg)
    path = Path(source)
    if path.is_dir():
        return [("file", str(p)) for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
    if not path.is_file():
        raise ConfigError(f"data source {source!r} does not exist; give a folder, a .csv, a .zip, "
                          "an image or synthetic:N.")
    if path.suffix.lower() == ".csv":
        return _csv_items(path, cfg, skipped)
    if path.suffix.lower() == ".zip":
        return _zip_items(path, skipped)
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return [("file", str(path))]
    raise ConfigError(f"data source {source!r}: not a folder, .csv, .zip or image file.")


def _synthetic_items(source: str, cfg: MAEConfig) -> list[Item]:
    parts = source.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else cfg.data.synthetic_seed
    except (IndexError, ValueError):
        raise ConfigError(f"{source!r}: write synthetic:N or synthetic:N:SEED") from None
    if n < 1 or len(parts) > 3:
        raise ConfigError(f"{source!r}: write synthetic:N or synthetic:N:SEED with N >= 1")
    p = np.asarray(APTOS_WEIGHTS, float)
    grades = np.random.default_rng([seed, 15]).choice(5, size=n, p=p / p.sum())
    seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(n)]
    return [("synthetic", s, cfg.data.synthetic_size, int(g)) for s, g in zip(seeds, grades,
                                                                                 strict=True)]


def _csv_items(path: Path, cfg: MAEConfig, skipped: Counter) -> list[Item]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return []
    column = cfg.data.csv_column or next((c for c in CSV_COLUMNS if c in rows[0]), None)
    if column is None or column not in rows[0]:
        raise ConfigError(f"{path}: no column {cfg.data.csv_column or CSV_COLUMNS}; columns are "
                          f"{list(rows[0])}. Set data.csv_column.")
    folder = path.parent / cfg.data.csv_images
    items = []
    for row in rows:
        name = (row.get(column) or "").strip()
        file = folder / f"{name}{cfg.data.csv_suffix}"
        if name and file.is_file():
            items.append(("file", str(file)))
        else:
            skipped["listed in a CSV but missing"] += 1
    return items


def _zip_items(path: Path, skipped: Counter) -> list[Item]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        skipped["unreadable zip file"] += 1
        return []
    return [("zip", str(path), n) for n in sorted(names)
            if not n.endswith("/") and not n.startswith("__MACOSX/")
            and Path(n).suffix.lower() in SUPPORTED_SUFFIXES]


# ------------------------------------------------------------------ items -> field crops


def load_rgb(item: Item, min_side: int) -> np.ndarray:
    kind = item[0]
    if kind == "synthetic":
        _, seed, size, grade = item
        return generate_fundus(grade, seed, size).image
    if kind == "zip":
        _, zpath, member = item
        with zipfile.ZipFile(zpath) as zf:
            data = zf.read(member)
        return decode_image(data, min_side=min_side, name=f"{Path(zpath).name}:{member}")
    return decode_image(item[1], min_side=min_side)


def cache_spec(cfg: MAEConfig) -> PreprocessSpec:
    """The preprocessing spec whose working crop (2 x its input_size) is the cache side."""
    side = cache_side(cfg)
    return dataclasses.replace(cfg.preprocessing, input_size=side // 2)


def cache_side(cfg: MAEConfig) -> int:
    side = cfg.data.cache_side or int(round(1.5 * cfg.preprocessing.input_size))
    return side + side % 2


def crop_one(task: tuple[int, Item, PreprocessSpec, bool]
             ) -> tuple[int, np.ndarray | None, str | None]:
    """Worker: one photo -> its field crop, or the reason it is skipped."""
    index, item, spec, require_field = task
    cv2.setNumThreads(1)
    try:
        rgb = load_rgb(item, decode_min_side(spec))
        work = prepare_work(rgb, spec, display=False)
    except Exception as exc:  # boundary: one bad photo never stops a pretraining run
        text = str(exc).strip().splitlines()
        return index, None, f"unreadable: {text[0][:200] if text else type(exc).__name__}"
    if require_field and spec.crop_to_field and not work.field.found:
        return index, None, "no fundus field found"
    return index, work.work, None


@dataclass(frozen=True)
class CropCache:
    images: np.ndarray  # (N, S, S, 3) uint8, in memory or a read-only memmap
    ok: np.ndarray  # (N,) bool
    errors: dict[str, str]  # item label -> reason
    path: Path | None = None  # images.npy of an on-disk cache (workers open it themselves)

    def summary(self, skipped_early: Counter) -> dict:
        reasons = Counter(r.split(":")[0] for r in self.errors.values()) + skipped_early
        return {"photos": int(self.ok.sum()), "skipped": sum(reasons.values()),
                "reasons": dict(reasons)}


def item_label(item: Item) -> str:
    if item[0] == "synthetic":
        return f"synthetic(seed={item[1]}, size={item[2]}, grade={item[3]})"
    return f"{item[1]}:{item[2]}" if item[0] == "zip" else str(item[1])


def cache_key(items: Sequence[Item], cfg: MAEConfig) -> str:
    spec = cache_spec(cfg)
    h = hashlib.sha256(json.dumps({
        "side": cache_side(cfg), "crop_to_field": spec.crop_to_field,
        "ben_graham": spec.ben_graham, "interpolation": spec.interpolation,
        "require_field": cfg.data.require_field, "decode": decode_min_side(spec)},
        sort_keys=True).encode())
    for item in items:
        if item[0] == "synthetic":
            h.update(f"{item}\n".encode())
            continue
        stat = Path(item[1]).stat()
        h.update(f"{item}|{stat.st_size}|{int(stat.st_mtime)}\n".encode())
    return h.hexdigest()[:20]


def build_crops(items: Sequence[Item], cfg: MAEConfig, *, workers: int | None = None,
                progress: bool = False) -> CropCache:
    """All field crops: read from ``data.cache_dir`` when built before, else built (in parallel)
    and, with a cache_dir, written atomically for the next run (and for the other DDP ranks)."""
    folder = Path(cfg.data.cache_dir) / cache_key(items, cfg) if cfg.data.cache_dir else None
    if folder is not None and (folder / "ok.npy").is_file():
        return CropCache(np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "ok.npy"),
                         json.loads((folder / "errors.json").read_text()), folder / "images.npy")
    side = cache_side(cfg)
    tmp = None
    if folder is None:
        images = np.zeros((len(items), side, side, 3), np.uint8)
    else:
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(items), side, side, 3))
    ok = np.zeros(len(items), bool)
    errors: dict[str, str] = {}
    spec = cache_spec(cfg)
    tasks = [(i, item, spec, cfg.data.require_field) for i, item in enumerate(items)]
    workers = max(1, workers if workers is not None else os.cpu_count() or 1)
    parallel = workers > 1 and len(tasks) > 8
    bar = tqdm(total=len(tasks), desc=f"field crops at {side} px", unit="photo",
               disable=not progress)
    with worker_pool(workers) if parallel else contextlib.nullcontext() as pool:
        results = pool.imap_unordered(crop_one, tasks, chunksize=4) if parallel else map(
            crop_one, tasks)
        for i, work, error in results:  # written as they come: never all crops in a list
            if error is None:
                images[i], ok[i] = work, True
            else:
                errors[item_label(items[i])] = error
            bar.update(1)
    bar.close()
    if tmp is None:
        return CropCache(images, ok, errors)
    images.flush()
    del images
    np.save(tmp / "ok.npy", ok)
    (tmp / "errors.json").write_text(json.dumps(errors, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return build_crops(items, cfg)


# ------------------------------------------------------------------ dataset and augmentation


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, out: int,
                        scale: tuple[float, float], ratio: tuple[float, float],
                        interp: int) -> np.ndarray:
    """torchvision's RandomResizedCrop (10 tries, then a centre crop), with a numpy rng."""
    h, w = img.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        cw = ch = min(h, w)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])
    return cv2.resize(crop, (out, out), interpolation=interp)


class EpochTagged(Sampler):
    """A DistributedSampler (seeded shuffle per epoch, one slice per rank) whose indices carry
    the epoch: yields ``(epoch, k)``."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank,
                                        shuffle=True, seed=seed, drop_last=False)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, int(k)) for k in self.inner])

    def __len__(self) -> int:
        return len(self.inner)


_CV2_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


class UnlabelledFundus(Dataset):
    """Normalised (3, S, S) tensors of the usable crops, augmented when ``train``.

    Indexed by ``(epoch, k)`` (see EpochTagged) or plain ``k`` (epoch 0): the epoch travels with
    each index, because a persistent DataLoader worker never sees a ``set_epoch`` call made in
    the main process after it started.
    """

    def __init__(self, crops: CropCache, cfg: MAEConfig, *, train: bool = True) -> None:
        self._images = None if crops.path is not None else crops.images
        self.path = crops.path
        self.rows = np.flatnonzero(crops.ok).tolist()
        self.cfg, self.spec = cfg, cfg.preprocessing
        self.augment = train and cfg.data.augment

    def __len__(self) -> int:
        return len(self.rows)

    def crop(self, k: int) -> np.ndarray:
        """The cached field crop (uint8, cache side) of usable photo k."""
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return np.array(self._images[self.rows[k]])

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, k = key if isinstance(key, tuple) else (0, key)
        work = self.crop(k)
        if not self.augment:
            return finish_tensor(work, self.spec)
        rng = np.random.default_rng([self.cfg.seed, epoch, self.rows[k]])
        return finish_tensor(work, self.spec, augment=self._augment(rng))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_images"] = None  # never pickle the memmap into workers
        return state

    def _augment(self, rng: np.random.Generator):
        d, size = self.cfg.data, int(self.spec.input_size)
        geometry_colour = build_augment(
            rng, hflip=d.hflip, vflip=False, rotate_deg=d.rotate_deg, brightness=d.colour_jitter,
            contrast=d.colour_jitter, saturation=d.colour_jitter / 2, hue=0.0, scale=(1.0, 1.0))
        interp = _CV2_INTERP.get(self.spec.interpolation, cv2.INTER_CUBIC)

        def apply(img: np.ndarray) -> np.ndarray:
            # crop first: flip, rotation and jitter at the input size cost a quarter as much
            img = random_resized_crop(img, rng, size, d.crop_scale, d.crop_ratio, interp)
            return geometry_colour(img)

        return apply
