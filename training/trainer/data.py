"""Datasets and samplers over the image cache, deterministic per (seed, epoch, index).

Determinism is what makes exact resume possible: the order of an epoch and each image's
augmentation depend only on the seed, the epoch and the index, never on worker scheduling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from core.preprocessing import PreprocessSpec, build_augment, finish_tensor


class CachedFundusDataset(Dataset):
    """(tensor, grade) pairs read from the cache; augmentation only when `train` is set."""

    def __init__(self, cache_folder: Path, rows: Sequence[int], grades: Sequence[int],
                 spec: PreprocessSpec, *, train: bool, seed: int, augment: bool = True,
                 dme: Sequence[int] | None = None) -> None:
        """dme: a DME label per row (-1 where the source has none); the target is then the
        pair (grade, dme), which the trainer's loss splits (training.dme)."""
        self.cache_folder = Path(cache_folder)
        self.rows = list(rows)
        self.grades = [int(g) for g in grades]
        self.dme = None if dme is None else [int(d) for d in dme]
        self.spec = spec
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.epoch = 0
        self._images: np.ndarray | None = None  # opened lazily in each worker process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int | tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        """k: an index, or (epoch, index) from EpochTagged (what persistent workers need)."""
        epoch, k = k if isinstance(k, tuple) else (self.epoch, k)
        if self._images is None:
            self._images = np.load(self.cache_folder / "images.npy", mmap_mode="r")
        row = self.rows[k]
        work = np.array(self._images[row])
        augment = None
        if self.augment:
            augment = build_augment(np.random.default_rng([self.seed, epoch, row]))
        x = finish_tensor(work, self.spec, augment=augment)
        if self.dme is None:
            return x, self.grades[k]
        return x, torch.tensor([self.grades[k], self.dme[k]], dtype=torch.long)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None  # never pickle the memmap into workers
        return state


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch (or class-balanced draws), sliced per DDP rank."""

    def __init__(self, grades: Sequence[int], seed: int, *, balanced: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        self.grades = np.asarray(grades)
        self.seed = seed
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.per_rank = int(np.ceil(len(self.grades) / world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        n = len(self.grades)
        if self.balanced:
            weights = 1.0 / np.bincount(self.grades, minlength=5)[self.grades]
            order = rng.choice(n, size=self.per_rank * self.world_size, p=weights / weights.sum())
        else:
            order = rng.permutation(n)
            pad = self.per_rank * self.world_size - n
            order = np.concatenate([order, order[:pad]]) if pad > 0 else order
        return iter(order[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


class EpochTagged(Sampler[tuple[int, int]]):
    """An EpochSampler's indices as (epoch, index) pairs.

    Persistent DataLoader workers hold their own copy of the dataset, made when they started:
    `set_epoch` on the main process's copy never reaches them, and every epoch would replay
    epoch 0's augmentations. The epoch travels with each index instead.
    """

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, k) for k in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def class_weights(grades: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1 over present classes); absent classes get 0."""
    counts = np.bincount(np.asarray(grades), minlength=5).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    present = weights > 0
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)
