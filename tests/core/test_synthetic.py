"""The synthetic fundus generator: determinism, ICDR consistency of masks, nuisances, writers."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigError
from core.synthetic import (
    NUISANCE_KINDS,
    NUISANCE_RATES,
    Nuisance,
    SyntheticFundus,
    generate_fundus,
    main,
    sample_nuisance,
    write_aptos_dataset,
    write_clinic_folder,
)
from core.synthetic_lesions import LESION_TYPES


# ---------------------------------------------------------------- an independent grader
def quadrant_counts(f: SyntheticFundus, key: str) -> list[int]:
    """Connected components of one mask per quadrant (by centroid) around the field centre."""
    cx, cy, _ = f.field
    n, _, _, cent = cv2.connectedComponentsWithStats(f.masks[key].astype(np.uint8), 8)
    counts = [0, 0, 0, 0]
    for x, y in cent[1:n]:
        counts[int(y >= cy) * 2 + int(x >= cx)] += 1
    return counts


def grade_from_masks(f: SyntheticFundus) -> int:
    """ICDR from the masks alone: PDR signs, then the 4-2-1 rule, then any lesion."""
    c = {k: quadrant_counts(f, k) for k in LESION_TYPES}
    if sum(c["neovascularisation"]) or sum(c["preretinal_haemorrhage"]):
        return 4
    four = all(n > 20 for n in c["haemorrhage"])
    two = sum(n > 0 for n in c["venous_beading"]) >= 2
    one = sum(n > 0 for n in c["irma"]) >= 1
    if four or two or one:
        return 3
    if any(sum(c[k]) for k in LESION_TYPES if k != "microaneurysm"):
        return 2
    return 1 if sum(c["microaneurysm"]) else 0


def field_mask(f: SyntheticFundus, shrink: float = 0.9) -> np.ndarray:
    cx, cy, r = f.field
    yy, xx = np.mgrid[: f.image.shape[0], : f.image.shape[1]]
    return np.hypot(xx - cx, yy - cy) < shrink * r


def lap_var(f: SyntheticFundus) -> float:
    grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F)[field_mask(f, 0.8)].var())


# ---------------------------------------------------------------- basics
def test_same_seed_same_image_other_seed_differs() -> None:
    a, b, c = (generate_fundus(3, s, 160) for s in (5, 5, 6))
    assert np.array_equal(a.image, b.image)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in LESION_TYPES)
    assert (a.field, a.eye, a.nuisances) == (b.field, b.eye, b.nuisances)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("width", [None, 200])
def test_shapes_dtypes_and_fields(width: int | None) -> None:
    f = generate_fundus(2, 1, 200, width=width)
    w = width or round(200 * 4 / 3)
    assert f.image.shape == (200, w, 3) and f.image.dtype == np.uint8
    assert set(f.masks) == set(LESION_TYPES)
    assert all(m.shape == (200, w) and m.dtype == bool for m in f.masks.values())
    assert np.array_equal(f.lesion_mask, np.logical_or.reduce(list(f.masks.values())))
    assert f.eye in ("left", "right") and set(f.nuisances) <= set(NUISANCE_KINDS)
    assert f.grade == 2 and f.seed == 1 and len(f.field) == 3


def test_field_is_lit_and_outside_is_black() -> None:
    f = generate_fundus(0, 3, 240, nuisance=Nuisance(eye="left"))
    grey = f.image.mean(axis=2)
    assert grey[field_mask(f, 0.5)].mean() > 60
    assert grey[~field_mask(f, 1.02)].mean() < 6
    r, g, b = (f.image[..., c][field_mask(f, 0.7)].mean() for c in range(3))
    assert r > g > b  # orange-red fundus


@pytest.mark.parametrize("eye", ["left", "right"])
def test_disc_side_follows_eye_and_fovea_is_darker(eye: str) -> None:
    f = generate_fundus(0, 4, 256, nuisance=Nuisance(eye=eye))
    (dx, dy, dr), (fx, fy) = f.disc, f.fovea
    assert (dx > fx) == (eye == "right")
    assert 4.0 < np.hypot(dx - fx, dy - fy) / dr < 6.0  # ~2.5 disc diameters
    assert 5.5 < f.field[2] / dr < 7.5  # disc ~1/6-1/7 of the field diameter
    grey = f.image.astype(float).mean(axis=2)
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]]
    disc = np.percentile(grey[np.hypot(xx - dx, yy - dy) < 0.8 * dr], 75)
    fovea = np.median(grey[np.hypot(xx - fx, yy - fy) < 0.4 * dr])
    field = np.median(grey[field_mask(f, 0.6)])
    assert disc > field + 30 and fovea < field - 5


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        generate_fundus(5, 0)
    with pytest.raises(ConfigError):
        generate_fundus(1, 0, 32)
    with pytest.raises(ConfigError):
        generate_fundus(1, 0, 128, nuisance=Nuisance(eye="both"))


# ---------------------------------------------------------------- ICDR consistency
@pytest.mark.parametrize("grade", range(5))
def test_grade_is_recoverable_from_masks(grade: int) -> None:
    for seed in range(10):
        size, width = (176, None) if seed % 3 else (160, 160)  # wide and square frames
        f = generate_fundus(grade, seed, size, width=width)
        assert grade_from_masks(f) == grade, (grade, seed, f.nuisances)


def test_severe_uses_each_arm_of_the_4_2_1_rule() -> None:
    arms = set()
    for seed in range(14):
        f = generate_fundus(3, seed, 200)
        if all(n > 20 for n in quadrant_counts(f, "haemorrhage")):
            arms.add("haem")
        if sum(n > 0 for n in quadrant_counts(f, "venous_beading")) >= 2:
            arms.add("vb")
        if sum(quadrant_counts(f, "irma")):
            arms.add("irma")
    assert arms == {"haem", "vb", "irma"}


def test_mild_has_few_microaneurysms_only() -> None:
    for seed in range(6):
        f = generate_fundus(1, seed, 200)
        n = sum(quadrant_counts(f, "microaneurysm"))
        assert 0 < n <= 8
        assert not any(f.masks[k].any() for k in LESION_TYPES if k != "microaneurysm")


def test_lesions_darken_or_brighten_the_photo_where_masked() -> None:
    f = generate_fundus(3, 2, 256, nuisance=Nuisance(eye="right"))
    clean = generate_fundus(0, 2, 256, nuisance=Nuisance(eye="right"))
    g_f, g_c = f.image[..., 1].astype(int), clean.image[..., 1].astype(int)
    haem = f.masks["haemorrhage"]
    assert haem.any() and (g_f[haem] - g_c[haem]).mean() < -10


# ---------------------------------------------------------------- nuisances
def test_lookalikes_never_enter_masks() -> None:
    base = generate_fundus(2, 9, 200, nuisance=Nuisance(eye="left"))
    dirty = generate_fundus(2, 9, 200, nuisance=Nuisance(eye="left", dust=6, eyelash=3))
    assert {"dust", "eyelash"} <= set(dirty.nuisances) and not base.nuisances
    assert all(np.array_equal(base.masks[k], dirty.masks[k]) for k in LESION_TYPES)
    darker = (base.image.astype(int) - dirty.image.astype(int)).max(axis=2) > 25
    assert darker.sum() > 50  # the spots and lashes are really there


def test_forced_blur_and_dark_degrade_the_photo() -> None:
    clean = generate_fundus(2, 4, 256, nuisance=Nuisance(eye="right"))
    blur = generate_fundus(2, 4, 256, nuisance=Nuisance.strong_blur(eye="right"))
    dark = generate_fundus(2, 4, 256, nuisance=Nuisance.very_dark(eye="right"))
    assert "blur" in blur.nuisances and "dark" in dark.nuisances
    assert lap_var(blur) < 0.2 * lap_var(clean)
    inside = field_mask(clean)
    assert dark.image[inside].mean() < 0.2 * clean.image[inside].mean()
    assert all(np.array_equal(clean.masks[k], blur.masks[k]) for k in LESION_TYPES)


def test_clipped_and_offcentre_flags_follow_geometry() -> None:
    f = generate_fundus(1, 0, 160, nuisance=Nuisance(field_scale=1.15, offset=(0.1, 0.0)))
    assert {"clipped", "offcentre"} <= set(f.nuisances)
    cx, cy, r = f.field
    assert r > 80 and cx > 160 * 4 / 3 / 2
    clean = generate_fundus(1, 0, 160, nuisance=Nuisance())
    assert not ({"clipped", "offcentre"} & set(clean.nuisances))


def test_sample_nuisance_rates() -> None:
    rng = np.random.default_rng(0)
    seen = {k: 0 for k in NUISANCE_KINDS}
    for _ in range(400):
        f_flags = generate_flags(sample_nuisance(rng))
        for k in f_flags:
            seen[k] += 1
    for k, p in NUISANCE_RATES.items():
        assert abs(seen[k] / 400 - p) < 0.08, (k, seen[k])
    none = sample_nuisance(np.random.default_rng(1), rate=0.0)
    assert generate_flags(none) == ()


def generate_flags(nz: Nuisance) -> tuple[str, ...]:
    """Flags without drawing: the cheapest call that runs the real flag logic."""
    from core.synthetic import _flags
    from core.synthetic_lesions import make_geometry

    geo = make_geometry(np.random.default_rng(0), 300, 400, nz.eye or "left", nz.field_scale,
                        nz.offset)
    return _flags(nz, geo)


# ---------------------------------------------------------------- writers
def test_aptos_layout_and_worker_independence(tmp_path: Path) -> None:
    one = write_aptos_dataset(tmp_path / "a", 5, seed=3, size=96, workers=1)
    rows = list(csv.DictReader((one / "train.csv").open()))
    assert [list(r) for r in rows[:1]] == [["id_code", "diagnosis"]] and len(rows) == 5
    meta = list(csv.DictReader((one / "meta.csv").open()))
    assert {"eye", "field_cx", "field_r", "nuisances"} <= set(meta[0])
    for r in rows:
        img = Image.open(one / "train_images" / f"{r['id_code']}.png")
        assert img.size == (128, 96) and img.mode == "RGB"
        with np.load(one / "masks" / f"{r['id_code']}.npz") as z:
            assert set(z.files) == set(LESION_TYPES) and z["haemorrhage"].dtype == bool
            if r["diagnosis"] == "0":
                assert not any(z[k].any() for k in z.files)
    two = write_aptos_dataset(tmp_path / "b", 5, seed=3, size=96, workers=2)
    assert (one / "meta.csv").read_text() == (two / "meta.csv").read_text()
    code = rows[-1]["id_code"]
    assert (one / "train_images" / f"{code}.png").read_bytes() == \
        (two / "train_images" / f"{code}.png").read_bytes()


def test_aptos_grade_weights_are_respected(tmp_path: Path) -> None:
    out = write_aptos_dataset(tmp_path, 8, seed=0, size=64,
                              grade_weights=(0, 0, 0, 0, 1), fmt="jpg")
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert {r["diagnosis"] for r in rows} == {"4"}
    assert all((out / "train_images" / f"{r['id_code']}.jpg").is_file() for r in rows)


def test_clinic_folder_matches_its_manifest(tmp_path: Path) -> None:
    recs = write_clinic_folder(tmp_path, 6, seed=1, size=96)
    on_disk = {p.name for p in tmp_path.iterdir()} - {"expected.csv"}
    assert {r["file"] for r in recs} == on_disk
    assert list(csv.DictReader((tmp_path / "expected.csv").open())) == recs
    grades = [r["grade"] for r in recs]
    assert grades.count("ungradable") >= 3 and grades.count("error") == 3
    assert any(re.fullmatch(r"\d+_(left|right)\.jpeg", r["file"]) for r in recs)
    assert any(re.fullmatch(r"PT\d+_O[DS]_2\.jpg", r["file"]) for r in recs)
    for r in recs:
        m = re.fullmatch(r"(\w+?)_(left|right|OD|OS)(_\d+)?\.jpe?g", r["file"])
        if m and r["patient"]:
            eye = {"OD": "right", "OS": "left"}.get(m[2], m[2])
            assert (m[1], eye) == (r["patient"], r["eye"])
        path = tmp_path / r["file"]
        if r["grade"] == "error":
            with pytest.raises(OSError):
                Image.open(path).load()
        else:
            assert Image.open(path).size == (128, 96)
        if r["duplicate_of"]:
            assert path.read_bytes() == (tmp_path / r["duplicate_of"]).read_bytes()
            assert r["grade"] == next(s["grade"] for s in recs if s["file"] == r["duplicate_of"])


def test_clinic_ungradable_photos_are_blurred_or_dark(tmp_path: Path) -> None:
    recs = write_clinic_folder(tmp_path, 6, seed=2, size=128)

    def centre(r: dict[str, str]) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / r["file"]).convert("L"), float)[32:96, 48:128]

    good = [centre(r) for r in recs if r["grade"] in "01234" and r["patient"]]
    sharp = np.median([cv2.Laplacian(c, cv2.CV_64F).var() for c in good])
    bright = np.median([c.mean() for c in good])
    bad = [r for r in recs if r["grade"] == "ungradable" and r["patient"]]
    assert {r["note"] for r in bad} == {"very dark", "strong blur"}
    for r in bad:
        if r["note"] == "very dark":
            assert centre(r).mean() < 0.2 * bright
        else:
            assert cv2.Laplacian(centre(r), cv2.CV_64F).var() < 0.3 * sharp


def test_cli_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["sheet", str(tmp_path / "s.png"), "--size", "80", "--seed", "1"])
    img = Image.open(tmp_path / "s.png")
    assert img.size == (5 * 107, 4 * 80)
    assert "s.png" in capsys.readouterr().out


# ---------------------------------------------------------------- against real photos
def test_colour_and_brightness_resemble_real_fundus(fundus_samples_dir: Path) -> None:
    """Synthetic field means must sit in the range of the real EyePACS samples."""
    def stats(rgb: np.ndarray) -> np.ndarray:
        grey = rgb.mean(axis=2)
        return rgb[grey > 20].mean(axis=0)

    real = []
    for p in sorted(fundus_samples_dir.glob("*_*.jpeg")):
        img = Image.open(p).convert("RGB")
        img.thumbnail((320, 320))
        real.append(stats(np.asarray(img, float)))
    real = np.array(real)
    synth = np.array([stats(generate_fundus(g, g, 200, nuisance=Nuisance()).image.astype(float))
                      for g in range(5)])
    lo, hi = real.min(axis=0) - 25, real.max(axis=0) + 25
    assert ((synth >= lo) & (synth <= hi)).all(), (synth, real)
    assert (synth[:, 0] > synth[:, 1]).all() and (synth[:, 1] > synth[:, 2]).all()


@pytest.mark.parametrize("seed", range(6))
def test_clinic_folder_of_one_patient_keeps_a_gradable_photo(tmp_path: Path, seed: int) -> None:
    # one patient has two photos; both used to be made ungradable, and the duplicate had no source
    recs = write_clinic_folder(tmp_path, 1, seed=seed, size=96)
    dup = next(r for r in recs if r["duplicate_of"])
    assert dup["grade"] in "01234"
    assert any(r["grade"] in "01234" and r["patient"] for r in recs)
