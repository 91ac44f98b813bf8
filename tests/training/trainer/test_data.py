"""Dataset presets, patient-level splits, and the preprocessed image cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError
from core.preprocessing import PreprocessSpec, preprocess_file
from tests.helpers import fundus_like
from training.trainer.config import DataConfig
from training.trainer.data import CachedFundusDataset, EpochSampler, class_weights
from training.trainer.datasets import PRESETS, load_records, split_by_patient
from training.trainer.image_cache import build_cache

PRESET_CASES = {
    "aptos": [("000c1434d8d7", "2"), ("001639a390f0", "4")],
    "eyepacs": [("10_left", "0"), ("10_right", "1")],
    "messidor2": [("20051020_43808_0100_PP.png", "1"), ("IM000001.JPG", "")],
    "idrid": [("IDRiD_001", "3"), ("IDRiD_002", "2")],
}


def _write_preset(root: Path, preset: str, rows) -> DataConfig:
    p = PRESETS[preset]
    images = root / p.images
    images.mkdir(parents=True)
    for image_id, _ in rows:
        Image.fromarray(fundus_like(0, 96)).save(images / f"{image_id}{p.suffix}", format="PNG")
    (root / p.csv).parent.mkdir(parents=True, exist_ok=True)  # IDRiD's CSV lies two folders down
    with open(root / p.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([p.id_column, p.label_column])
        writer.writerows(rows)
    return DataConfig(preset=preset, csv=str(root / p.csv))


@pytest.mark.parametrize("preset", sorted(PRESET_CASES))
def test_presets_read_their_own_layout(tmp_path, preset):
    rows = PRESET_CASES[preset]
    records, summary = load_records(_write_preset(tmp_path, preset, rows))
    usable = [(i, int(g)) for i, g in rows if g != ""]
    assert [(r.id, r.grade) for r in records] == usable
    assert summary["dropped"] == ({"no grade": 1} if len(usable) < len(rows) else {})
    if preset == "eyepacs":
        assert {r.patient for r in records} == {"10"}  # both eyes, one patient


def test_wrong_columns_fail_clearly(tmp_path):
    (tmp_path / "train.csv").write_text("image,grade\nx,1\n")
    with pytest.raises(ConfigError, match="id_code"):
        load_records(DataConfig(preset="aptos", csv=str(tmp_path / "train.csv")))


def test_custom_csv_needs_its_columns():
    with pytest.raises(ConfigError, match="id_column"):
        load_records(DataConfig(preset="csv", csv="x.csv"))


def test_a_number_where_text_belongs_says_how_to_quote_it():
    from training.trainer.config import load_config

    with pytest.raises(ConfigError, match=r"field 'version': expected text, got the number 1.2; "
                                          r"quote it.*--set 'version=\"1.2\"'"):
        load_config(None, ["version=1.2"])
    assert load_config(None, ['version="1.10"']).version == "1.10"  # quoted: kept as written


def test_patient_split_keeps_eyes_together_and_stratifies():
    from training.trainer.datasets import LabelledImage

    records = [LabelledImage(f"{p}_{eye}", Path("x"), p % 5, str(p))
               for p in range(100) for eye in ("left", "right")]
    train, val = split_by_patient(records, 0.2, seed=0)
    assert {r.patient for r in train}.isdisjoint({r.patient for r in val})
    assert len(val) == 40
    assert sorted({r.grade for r in val}) == [0, 1, 2, 3, 4]


def test_cache_matches_serving_path_and_resumes(tmp_path):
    from training.trainer.datasets import LabelledImage

    spec = PreprocessSpec(input_size=48)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(fundus_like(i, 160)).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    records = [LabelledImage(p.stem, p, i % 5, p.stem) for i, p in
               enumerate(paths + [tmp_path / "broken.png"])]
    cache = build_cache(records, spec, tmp_path / "cache", workers=1, progress=False)
    assert cache.ok.tolist() == [True, True, True, False]
    assert "broken" in cache.errors
    ds = CachedFundusDataset(cache.folder, [0, 1, 2], [0, 1, 2], spec, train=False, seed=0)
    for i in range(3):
        assert torch.equal(ds[i][0], preprocess_file(paths[i], spec).tensor)
    done = np.load(cache.folder / "done.npy")
    done[1] = False
    np.save(cache.folder / "done.npy", done)
    again = build_cache(records, spec, tmp_path / "cache", workers=1, progress=False)
    assert again.folder == cache.folder and again.ok.tolist() == [True, True, True, False]


def test_sampler_is_deterministic_and_splits_ranks():
    grades = [0] * 30 + [4] * 3
    a = list(EpochSampler(grades, seed=1))
    assert a == list(EpochSampler(grades, seed=1)) and sorted(a) == list(range(33))
    ranks = [list(EpochSampler(grades, 1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 17
    balanced = list(EpochSampler(grades, 1, balanced=True))
    assert sum(grades[i] == 4 for i in balanced) > 8  # minority drawn ~half the time


def test_class_weights_favour_rare_grades():
    w = class_weights([0] * 8 + [2] * 2)
    assert w[2] > w[0] and w[1] == 0 and w[[0, 2]].mean() == pytest.approx(1.0)


def test_persistent_workers_see_each_new_epoch(tmp_path):
    """Every epoch draws new augmentations, also in persistent DataLoader workers (they keep the
    dataset copy they started with, so set_epoch on the main process's copy never reached them
    and every epoch replayed epoch 0)."""
    from training.trainer.config import load_config
    from training.trainer.datasets import LabelledImage
    from training.trainer.distributed import DistInfo
    from training.trainer.loop import make_loaders

    spec = PreprocessSpec(input_size=64)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(fundus_like(i, 128)).save(paths[-1])
    records = [LabelledImage(p.stem, p, i, p.stem) for i, p in enumerate(paths)]
    cache = build_cache(records, spec, tmp_path / "cache", workers=1, progress=False)
    cfg = load_config(None, ["data.num_workers=1", "optim.batch_size=2", "data.augment=true",
                             "preprocessing.input_size=64"])
    loaders = make_loaders(cfg, cache.folder, [0, 1], [0, 1], [0, 1], [0, 1], DistInfo())
    assert loaders.train.persistent_workers
    seen = []
    for epoch in range(3):
        loaders.sampler.set_epoch(epoch)
        loaders.train_ds.set_epoch(epoch)
        images, grades = next(iter(loaders.train))
        seen.append({int(g): x for g, x in zip(grades, images, strict=True)})
    for grade in (0, 1):
        assert not torch.equal(seen[0][grade], seen[1][grade])
        assert not torch.equal(seen[1][grade], seen[2][grade])
