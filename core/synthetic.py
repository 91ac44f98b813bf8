"""Synthetic fundus photographs with per-lesion masks, and the data sets built from them.

No public DR data set is reachable offline, so demo models train on these images and the
heatmap checks compare explanations against their masks. Images are research-use stand-ins:
they mimic the look of EyePACS/APTOS photos (orange-red vignetted field on black, disc, macula,
arcading vessels, camera faults) and follow the ICDR rules, not any real patient.

Eye convention (photographs as taken): right eye = optic disc right of the fovea in the image.
CLI: ``python -m core.synthetic aptos OUT --n 200 --seed 0`` | ``clinic OUT --patients 20``
| ``sheet OUT.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from core.synthetic_lesions import (
    DENSITY_SCALE,
    LESION_TYPES,
    Canvas,
    Geometry,
    draw_lesions,
    draw_vessels,
    make_geometry,
)
from core.workers import worker_pool

NUISANCE_KINDS = ("blur", "dark", "colour_cast", "illumination", "dust", "eyelash",
                  "offcentre", "clipped")
# Base probability of each degradation in sample_nuisance (scaled by its `rate`).
NUISANCE_RATES = {"blur": 0.08, "dark": 0.08, "colour_cast": 0.4, "illumination": 0.35,
                  "dust": 0.15, "eyelash": 0.08, "offcentre": 0.12, "clipped": 0.45}
APTOS_WEIGHTS = (0.49, 0.10, 0.27, 0.05, 0.09)
_K_BLOOD = np.array([0.45, 1.5, 1.25], np.float32)  # haemoglobin absorbs green/blue most
_K_MACULA = np.array([0.55, 0.9, 0.8], np.float32)
_BRIGHT = {"hard_exudate": ((1.0, 0.9, 0.42), 0.003), "cotton_wool": ((0.96, 0.9, 0.76), 0.015)}


@dataclass(frozen=True)
class Nuisance:
    """Camera and eye conditions of one photo; the defaults give a clean, centred field."""

    eye: str | None = None  # "left" | "right"; None: drawn from the seed
    field_scale: float = 0.92  # field radius / half the frame height; > 1 clips top and bottom
    offset: tuple[float, float] = (0.0, 0.0)  # field centre shift, in field radii
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel camera gains
    illumination: float = 0.0  # strength of a linear light gradient (0-0.6)
    illumination_angle: float = 0.0  # radians, direction of the brighter side
    blur: float = 0.0  # defocus sigma in field radii; >= 0.02 is ungradable
    dark: float = 0.0  # exposure loss 0-1; >= 0.8 is ungradable
    dust: int = 0  # dark soft dust spots on the optics (lesion look-alikes, never in masks)
    eyelash: int = 0  # blurred eyelash shadows near the rim

    @classmethod
    def strong_blur(cls, **kw: object) -> Nuisance:
        """Out of focus beyond grading (for quality-gate tests)."""
        return cls(blur=0.03, **kw)  # type: ignore[arg-type]

    @classmethod
    def very_dark(cls, **kw: object) -> Nuisance:
        """Under-exposed beyond grading (for quality-gate tests)."""
        return cls(dark=0.88, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class SyntheticFundus:
    """One generated photo with the truth that made it."""

    image: np.ndarray  # RGB uint8 HxWx3
    grade: int  # ICDR 0-4
    masks: dict[str, np.ndarray]  # bool HxW for every name in LESION_TYPES
    field: tuple[float, float, float]  # cx, cy, radius (pixels)
    eye: str  # "left" | "right"
    nuisances: tuple[str, ...]  # subset of NUISANCE_KINDS that were applied
    seed: int
    disc: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, radius (pixels)
    fovea: tuple[float, float] = (0.0, 0.0)

    @property
    def lesion_mask(self) -> np.ndarray:
        """Union of all lesion masks (what a heatmap should point at)."""
        return np.logical_or.reduce([self.masks[k] for k in LESION_TYPES])


def sample_nuisance(rng: np.random.Generator, rate: float = 1.0) -> Nuisance:
    """Random eye and camera conditions; each kind fires with NUISANCE_RATES[kind] * rate."""
    on = {k: rng.uniform() < min(1.0, p * rate) for k, p in NUISANCE_RATES.items()}
    eye = "left" if rng.uniform() < 0.5 else "right"
    a = rng.uniform(0, 2 * np.pi)
    return Nuisance(
        eye=eye,
        field_scale=rng.uniform(1.03, 1.18) if on["clipped"] else rng.uniform(0.86, 0.97),
        offset=(rng.uniform(0.06, 0.18) * math.cos(a), rng.uniform(0.06, 0.18) * math.sin(a))
        if on["offcentre"] else (0.0, 0.0),
        colour_cast=tuple(np.clip(rng.normal(1, 0.1, 3), 0.75, 1.25).round(3))
        if on["colour_cast"] else (1.0, 1.0, 1.0),
        illumination=rng.uniform(0.15, 0.5) if on["illumination"] else 0.0,
        illumination_angle=rng.uniform(0, 2 * np.pi),
        blur=rng.uniform(0.003, 0.02) if on["blur"] else 0.0,
        dark=rng.uniform(0.3, 0.8) if on["dark"] else 0.0,
        dust=int(rng.integers(1, 7)) if on["dust"] else 0,
        eyelash=int(rng.integers(1, 4)) if on["eyelash"] else 0,
    )


def generate_fundus(grade: int, seed: int, size: int = 512, *, width: int | None = None,
                    nuisance: Nuisance | None = None) -> SyntheticFundus:
    """A deterministic photo of ICDR `grade`; `size` is the height, width ~4/3 of it by default.

    Separate random streams for anatomy, lesions and camera faults: changing a nuisance never
    moves a lesion, so look-alikes can be tested against unchanged masks.
    """
    if grade not in range(5):
        raise ConfigError(f"grade must be an ICDR grade 0-4, got {grade!r}")
    if size < 64 or (width is not None and width < 64):
        raise ConfigError(f"image too small ({size}x{width}); use at least 64 px")
    h, w = int(size), int(width) if width else int(round(size * 4 / 3))
    r_anat, r_les, r_nuis, r_art = (np.random.default_rng(s)
                                    for s in np.random.SeedSequence(seed).spawn(4))
    if nuisance is None:
        nuisance = sample_nuisance(r_nuis)
    eye_draw = r_anat.uniform()
    eye = nuisance.eye or ("left" if eye_draw < 0.5 else "right")
    if eye not in ("left", "right"):
        raise ConfigError(f"eye must be 'left' or 'right', got {eye!r}")
    geo = make_geometry(r_anat, h, w, eye, nuisance.field_scale, nuisance.offset)
    cv = Canvas.empty(h, w)
    draw_vessels(r_anat, geo, cv)
    draw_lesions(grade, r_les, geo, cv)
    img, infield = _compose(r_anat, r_art, geo, cv, nuisance)
    masks = {k: (cv.masks[k] > 0) & infield if cv.masks[k].any() else np.zeros((h, w), bool)
             for k in LESION_TYPES}
    return SyntheticFundus(img, grade, masks, (geo.cx, geo.cy, geo.radius), eye,
                           _flags(nuisance, geo), int(seed),
                           (geo.disc[0], geo.disc[1], geo.disc_r), geo.fovea)


def _flags(n: Nuisance, geo: Geometry) -> tuple[str, ...]:
    clipped = (geo.cy - geo.radius < -0.01 * geo.radius or geo.cy + geo.radius > geo.height * 1.01
               or geo.cx - geo.radius < 0 or geo.cx + geo.radius > geo.width)
    on = {"blur": n.blur > 0, "dark": n.dark > 0,
          "colour_cast": max(abs(g - 1) for g in n.colour_cast) > 0.02,
          "illumination": n.illumination > 0, "dust": n.dust > 0, "eyelash": n.eyelash > 0,
          "offcentre": math.hypot(*n.offset) > 0.03, "clipped": clipped}
    return tuple(k for k in NUISANCE_KINDS if on[k])


# ---------------------------------------------------------------- composition
def _compose(rng: np.random.Generator, r_art: np.random.Generator, geo: Geometry, cv: Canvas,
             nz: Nuisance) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance x blood absorption, then camera faults; returns (uint8 RGB, in-field mask)."""
    h, w, R = geo.height, geo.width, geo.radius
    img = cv2.resize(_background(rng, geo, nz), (w, h), interpolation=cv2.INTER_LINEAR)
    _disc(rng, geo, img)
    for key, (colour, sig) in _BRIGHT.items():
        _blend(img, cv.bright[key], np.array(colour, np.float32), sig * R)
    # Absorption exp(-k * density) and the camera's gains as one 3-channel lookup table.
    dens = cv2.GaussianBlur(cv.density, (0, 0), max(0.6, 0.002 * R))
    gain = np.asarray(nz.colour_cast, np.float32) * (1.0 - nz.dark)
    lut = np.exp(-np.arange(256, dtype=np.float32)[:, None] / DENSITY_SCALE * _K_BLOOD) * gain
    absorb = cv2.LUT(cv2.merge([dens, dens, dens]), lut.reshape(1, 256, 3).astype(np.float32))
    cv2.multiply(img, absorb, dst=img)
    if nz.dust or nz.eyelash:
        img *= (1.0 - _occluders(r_art, geo, nz))[..., None]
    if nz.blur > 0:
        img = _gauss(img, nz.blur * R)
    xs = (np.arange(w, dtype=np.float32) - np.float32(geo.cx)) ** 2
    ys = (np.arange(h, dtype=np.float32) - np.float32(geo.cy)) ** 2
    r = np.sqrt(ys[:, None] + xs[None, :])
    fm = np.minimum(np.maximum(np.float32(R + 0.5) - r, 0.0), 1.0)
    cv2.multiply(img, cv2.merge([fm, fm, fm]), dst=img)
    cv2.add(img, _noise(r_art, h, w), dst=img)
    return cv2.convertScaleAbs(img, alpha=255.0), r <= R


def _background(rng: np.random.Generator, geo: Geometry, nz: Nuisance) -> np.ndarray:
    """Low-resolution smooth reflectance: colour, vignetting, choroid texture, macula, light."""
    f = max(1.0, geo.height / 160)
    lh, lw = max(8, round(geo.height / f)), max(8, round(geo.width / f))
    y, x = np.mgrid[:lh, :lw].astype(np.float32)
    x, y = (x + 0.5) * f - geo.cx, (y + 0.5) * f - geo.cy
    rr = np.sqrt(x * x + y * y) / geo.radius
    s = 1.0 - rng.uniform(0.3, 0.5) * np.clip(rr, 0, 1.2) ** 2.4
    for cells, amp in ((4, 0.05), (16, 0.022), (60, 0.012)):
        noise = rng.normal(0, 1, (cells, max(2, round(cells * lw / lh)))).astype(np.float32)
        s += amp * cv2.resize(noise, (lw, lh), interpolation=cv2.INTER_CUBIC)
    if nz.illumination:
        a = nz.illumination_angle
        s *= 1 + nz.illumination * (x * math.cos(a) + y * math.sin(a)) / geo.radius
    fx, fy = geo.fovea[0] - geo.cx, geo.fovea[1] - geo.cy
    d2 = ((x - fx) ** 2 + (y - fy) ** 2) / geo.radius ** 2
    mac = rng.uniform(0.25, 0.45) * np.exp(-d2 / 0.05) + rng.uniform(0.3, 0.5) * np.exp(-d2 / 0.004)
    base = np.array([rng.uniform(0.66, 0.92), 0, 0], np.float32)  # EyePACS: G/R 0.6-0.85
    base[1] = base[0] * rng.uniform(0.52, 0.76)
    base[2] = base[1] * rng.uniform(0.55, 0.8)
    out = base * np.clip(s, 0.05, 1.5)[..., None] * np.exp(-_K_MACULA * mac[..., None])
    return out.astype(np.float32)


def _disc(rng: np.random.Generator, geo: Geometry, img: np.ndarray) -> None:
    """Bright yellowish disc with a paler cup, soft-edged, blended in its own box."""
    x, y, r = geo.disc[0], geo.disc[1], geo.disc_r
    x0, x1 = max(0, int(x - 2 * r)), min(geo.width, int(x + 2 * r) + 1)
    y0, y1 = max(0, int(y - 2 * r)), min(geo.height, int(y + 2 * r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = (a.astype(np.float32) for a in np.ogrid[y0:y1, x0:x1])
    d = np.sqrt(((xx - x) / r) ** 2 + ((yy - y) / (r * 1.08)) ** 2)
    alpha = np.clip((1.05 - d) / 0.2, 0, 1) * 0.75
    cx = x - geo.nasal * 0.15 * r
    cup = np.exp(-(((xx - cx) ** 2 + (yy - y) ** 2) / (rng.uniform(0.3, 0.5) * r) ** 2))
    roi = img[y0:y1, x0:x1]
    around = roi.reshape(-1, 3).mean(axis=0)  # the disc is pale relative to its surroundings
    col = np.clip(around * rng.uniform(1.4, 1.7) + (0.15, 0.12, 0.04), 0, 1).astype(np.float32)
    roi += alpha[..., None] * (col - roi)
    cup_col = np.clip(around * 1.8 + 0.3, 0, 1).astype(np.float32)
    roi += (0.6 * cup)[..., None] * (cup_col - roi)


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, sigma: float) -> None:
    """Alpha-blend a pale lesion layer, scaled to the local illumination, inside its box."""
    if not alpha.any():
        return
    bx, by, bw, bh = cv2.boundingRect((alpha > 0).astype(np.uint8))
    pad = int(3 * sigma) + 2
    x0, y0 = max(0, bx - pad), max(0, by - pad)
    x1, y1 = min(img.shape[1], bx + bw + pad), min(img.shape[0], by + bh + pad)
    a = _gauss(alpha[y0:y1, x0:x1], sigma)
    roi = img[y0:y1, x0:x1]
    light = np.clip(roi[..., :1] / max(float(roi[..., 0].max()), 1e-3) * 1.2, 0.5, 1.0)
    roi += a[..., None] * (colour * light - roi)


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas go through a downscaled copy to stay fast at 2416 px."""
    if sigma < 0.3:
        return img
    if sigma <= 4:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    k = sigma / 2.0
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w / k)), max(1, round(h / k))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _occluders(rng: np.random.Generator, geo: Geometry, nz: Nuisance) -> np.ndarray:
    """Dust spots (round, grey, lesion-sized) and eyelash shadows (curved streaks at the rim)."""
    R = geo.radius
    occ = np.zeros((geo.height, geo.width), np.float32)
    for _ in range(nz.dust):
        a, d = rng.uniform(0, 2 * np.pi), R * math.sqrt(rng.uniform(0, 0.8))
        x = min(max(geo.cx + d * math.cos(a), 0), geo.width - 1)
        y = min(max(geo.cy + d * math.sin(a), 0), geo.height - 1)
        cv2.circle(occ, (int(x), int(y)), max(1, int(rng.uniform(0.015, 0.035) * R)),
                   float(rng.uniform(0.5, 0.8)), -1)
    occ = _gauss(occ, 0.006 * R)
    lash = np.zeros_like(occ)
    for _ in range(nz.eyelash):
        side = rng.choice((-1, 1))
        x0 = geo.cx + rng.uniform(-0.6, 0.6) * R
        t = np.linspace(0, 1, 24)
        xs = x0 + rng.uniform(-0.4, 0.4) * R * t + rng.uniform(-0.1, 0.1) * R * t ** 2
        ys = geo.cy + side * R * (1.02 - rng.uniform(0.3, 0.5) * t)
        pts = np.round(np.column_stack([xs, ys])).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(lash, [pts], False, float(rng.uniform(0.6, 0.9)),
                      max(1, int(rng.uniform(0.02, 0.04) * R)))
    return np.clip(occ + _gauss(lash, 0.012 * R), 0, 0.85)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sensor noise from a tiled 128 px patch (full-frame normals are the slowest step)."""
    tile = rng.normal(0, 0.004, (128, 128, 3)).astype(np.float32)
    reps = (h // 128 + 1, w // 128 + 1, 1)
    return np.tile(tile, reps)[:h, :w]


# ---------------------------------------------------------------- data sets
def _image_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def _save(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise ConfigError(f"could not write {path}; check the folder exists and is writable")


def _aptos_one(task: tuple) -> dict[str, object]:
    """Worker: generate, save image and masks, return the meta row."""
    out, code, grade, img_seed, size, width, fmt, rate = task
    cv2.setNumThreads(1)
    nz = sample_nuisance(np.random.default_rng([img_seed, 7]), rate)
    f = generate_fundus(grade, img_seed, size, width=width, nuisance=nz)
    _save(Path(out) / "train_images" / f"{code}.{fmt}", f.image)
    _save_masks(Path(out) / "masks" / f"{code}.npz", f.masks)
    cx, cy, r = f.field
    return {"id_code": code, "diagnosis": grade, "seed": img_seed, "eye": f.eye,
            "width": f.image.shape[1], "height": f.image.shape[0], "field_cx": round(cx, 1),
            "field_cy": round(cy, 1), "field_r": round(r, 1), "nuisances": ";".join(f.nuisances),
            **{f"n_{k}": int(cv2.connectedComponents(m.view(np.uint8))[0] - 1)
               for k, m in f.masks.items()}}


def _save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    """np.savez_compressed at zlib level 1: same .npz, 4x faster on mostly-empty masks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, m in masks.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(m), allow_pickle=False)


def write_aptos_dataset(out_dir: str | Path, n: int, seed: int, *, size: int = 512,
                        width: int | None = None, grade_weights: Sequence[float] = APTOS_WEIGHTS,
                        fmt: str = "png", workers: int = 1, nuisance_rate: float = 1.0) -> Path:
    """APTOS-2019 layout: train.csv (id_code,diagnosis), train_images/, masks/*.npz, meta.csv.

    Image i depends only on (seed, i), so the output is the same for any number of workers.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ConfigError(f"fmt must be png or jpg, got {fmt!r}")
    p = np.asarray(grade_weights, float)
    if p.shape != (5,) or (p < 0).any() or p.sum() <= 0:
        raise ConfigError("grade_weights needs 5 non-negative weights, one per ICDR grade")
    out = Path(out_dir)
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    grades = np.random.default_rng(seed).choice(5, size=n, p=p / p.sum())
    tasks = [(str(out), hashlib.sha1(f"{seed}:{i}".encode()).hexdigest()[:12], int(grades[i]),
              _image_seed(seed, i), size, width, fmt, nuisance_rate) for i in range(n)]
    if workers > 1:
        with worker_pool(workers) as pool:
            rows = pool.map(_aptos_one, tasks, chunksize=max(1, min(16, n // (4 * workers))))
    else:
        rows = [_aptos_one(t) for t in tasks]
    _write_csv(out / "train.csv", [{"id_code": r["id_code"], "diagnosis": r["diagnosis"]}
                                   for r in rows])
    _write_csv(out / "meta.csv", rows)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["file"])
        wr.writeheader()
        wr.writerows(rows)


# ---------------------------------------------------------------- a clinic's batch folder
_EXPECTED_COLS = ("file", "patient", "eye", "grade", "true_grade", "duplicate_of", "note")


def write_clinic_folder(out_dir: str | Path, n_patients: int, seed: int, *,
                        size: int = 512) -> list[dict[str, str]]:
    """A messy screening folder and its answer key, expected.csv.

    EyePACS names (`<id>_left.jpeg`) and clinic names (`<id>_OD_<n>.jpg`, 1-2 fields per eye),
    some ungradable photos (strong blur / very dark), broken files (truncated JPEG, zero bytes),
    a text file and a natural picture named .jpg, and one exact duplicate under another name.
    `grade` is the ICDR grade, "ungradable" or "error"; patient and eye are empty where the
    file name encodes neither.
    """
    if n_patients < 1:
        raise ConfigError(f"n_patients must be at least 1, got {n_patients}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shots = _plan_shots(rng, n_patients)
    n_bad = min(max(2, len(shots) // 10), len(shots) - 1)  # one good photo at least
    bad = set(rng.permutation(len(shots))[:n_bad].tolist())
    records: list[dict[str, str]] = []
    for i, (name, pid, eye, grade) in enumerate(shots):
        nz = sample_nuisance(np.random.default_rng([seed, i, 7]), 0.7)
        nz = dataclasses.replace(nz, eye=eye, blur=0.0, dark=0.0)
        label, note = str(grade), ""
        if i in bad:  # alternate the two ways a photo becomes ungradable
            fault = {"blur": 0.03} if len(records) % 2 else {"dark": 0.88}
            nz = dataclasses.replace(nz, **fault)
            label, note = "ungradable", "strong blur" if "blur" in fault else "very dark"
        f = generate_fundus(grade, _image_seed(seed, i), size, nuisance=nz)
        _save(out / name, f.image, quality=90)
        records.append(dict(zip(_EXPECTED_COLS, (name, pid, eye, label, str(grade), "", note),
                                strict=True)))
    records += _oddities(out, rng, records, shots, size)
    _write_csv(out / "expected.csv", records)
    return records


def _plan_shots(rng: np.random.Generator, n_patients: int) -> list[tuple[str, str, str, int]]:
    """(file name, patient id, eye, grade) per photo; fellow eyes get similar grades."""
    shots = []
    ids = rng.permutation(np.arange(10, 10 + 40 * n_patients))[:n_patients]
    for p in range(n_patients):
        worst = int(rng.choice(5, p=APTOS_WEIGHTS))
        grades = {"left": worst, "right": max(0, worst - int(rng.integers(0, 2)))}
        if rng.uniform() < 0.5:
            grades = {"left": grades["right"], "right": grades["left"]}
        if p % 2 == 0:
            pid = str(int(ids[p]))
            shots += [(f"{pid}_{eye}.jpeg", pid, eye, g) for eye, g in grades.items()]
        else:
            pid = f"PT{1000 + p:04d}"
            for eye, g in grades.items():
                code = "OD" if eye == "right" else "OS"
                for k in range(1, 2 + int(rng.uniform() < 0.4)):
                    shots.append((f"{pid}_{code}_{k}.jpg", pid, eye, g))
    return shots


def _oddities(out: Path, rng: np.random.Generator, records: list[dict[str, str]],
              shots: list, size: int) -> list[dict[str, str]]:
    """Files a real folder contains besides good photos."""
    rec = lambda f, p, e, g, note, dup="": dict(  # noqa: E731
        zip(_EXPECTED_COLS, (f, p, e, g, "", dup, note), strict=True))
    pid = next((s[1] for s in shots if s[1].startswith("PT")), "PT9999")
    full = (out / records[0]["file"]).read_bytes()
    (out / f"{pid}_OS_9.jpg").write_bytes(full[: len(full) // 3])
    (out / "empty_scan.jpg").write_bytes(b"")
    (out / "notes.jpg").write_text("Patient list - not an image\n")
    _save(out / "holiday_photo.jpg", _natural_picture(rng, size), quality=90)
    src = next(r for r in records if r["grade"] not in ("ungradable",))
    (out / "IMG_0001.jpg").write_bytes((out / src["file"]).read_bytes())
    return [rec(f"{pid}_OS_9.jpg", pid, "left", "error", "truncated JPEG"),
            rec("empty_scan.jpg", "", "", "error", "zero bytes"),
            rec("notes.jpg", "", "", "error", "text file named .jpg"),
            rec("holiday_photo.jpg", "", "", "ungradable", "not a fundus photo"),
            {**rec("IMG_0001.jpg", "", "", src["grade"], "exact duplicate", src["file"]),
             "true_grade": src["true_grade"]}]


def _natural_picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sky, sun and hills: a valid photo that is no fundus (must come out ungradable)."""
    h, w = size, int(round(size * 4 / 3))
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.array([90, 150, 235], np.float32) + t * np.array([200, 225, 250])
    img = np.broadcast_to(img, (h, w, 3)).copy()
    cv2.circle(img, (int(w * rng.uniform(0.6, 0.9)), int(h * 0.2)), h // 12, (255, 240, 180), -1)
    xs = np.arange(w)
    for k, col in enumerate(((70, 130, 60), (40, 100, 45))):
        ridge = h * (0.55 + 0.1 * k) + h * 0.06 * np.sin(xs / w * rng.uniform(4, 9) + k)
        img[np.arange(h)[:, None] > ridge[None, :]] = col
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- contact sheet and CLI
_OVERLAY = {"microaneurysm": (255, 40, 40), "haemorrhage": (255, 140, 0),
            "hard_exudate": (255, 255, 0), "cotton_wool": (0, 255, 255),
            "venous_beading": (40, 90, 255), "irma": (255, 0, 255),
            "neovascularisation": (0, 255, 0), "preretinal_haemorrhage": (255, 255, 255)}
_SHOWCASE = {"blur": Nuisance(blur=0.012), "dark": Nuisance(dark=0.6),
             "colour_cast": Nuisance(colour_cast=(0.85, 1.15, 1.2)),
             "illumination": Nuisance(illumination=0.5, illumination_angle=2.5),
             "dust": Nuisance(dust=6), "eyelash": Nuisance(eyelash=3),
             "offcentre": Nuisance(offset=(0.15, -0.1)), "clipped": Nuisance(field_scale=1.15)}


def overlay_masks(f: SyntheticFundus) -> np.ndarray:
    """The photo with each lesion type's outline in its own colour (for eyeballing masks)."""
    img = f.image.copy()
    for key, colour in _OVERLAY.items():
        m = f.masks[key].view(np.uint8)
        if m.any():
            cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(img, cnts, -1, colour, 1)
    return img


def make_contact_sheet(out_path: str | Path, seed: int = 0, size: int = 320) -> Path:
    """One image per grade, their mask overlays, and one image per nuisance kind, labelled."""
    tiles: list[tuple[np.ndarray, str]] = []
    graded = [generate_fundus(g, seed + g, size, nuisance=Nuisance(eye=("left", "right")[g % 2]))
              for g in range(5)]
    tiles += [(f.image, f"grade {f.grade} ({f.eye})") for f in graded]
    tiles += [(overlay_masks(f), f"grade {f.grade} masks") for f in graded]
    for i, (kind, nz) in enumerate(_SHOWCASE.items()):
        f = generate_fundus(2, seed + 10 + i, size, nuisance=nz)
        tiles.append((f.image, f"{kind} (g2)"))
    h, w = tiles[0][0].shape[:2]
    cols = 5
    sheet = np.zeros((h * math.ceil(len(tiles) / cols), w * cols, 3), np.uint8)
    for i, (img, label) in enumerate(tiles):
        y, x = (i // cols) * h, (i % cols) * w
        sheet[y:y + h, x:x + w] = img
        cv2.putText(sheet, label, (x + 6, y + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, sheet)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: aptos | clinic | sheet."""
    ap = argparse.ArgumentParser(prog="python -m core.synthetic",
                                 description=(__doc__ or "").split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("aptos", help="APTOS-2019-like training set")
    a.add_argument("out")
    a.add_argument("--n", type=int, default=200)
    a.add_argument("--width", type=int, default=None)
    a.add_argument("--workers", type=int, default=1)
    a.add_argument("--fmt", default="png")
    a.add_argument("--nuisance-rate", type=float, default=1.0)
    c = sub.add_parser("clinic", help="messy screening folder with expected.csv")
    c.add_argument("out")
    c.add_argument("--patients", type=int, default=20)
    s = sub.add_parser("sheet", help="contact sheet PNG")
    s.add_argument("out")
    for p in (a, c, s):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--size", type=int, default=512 if p is not s else 320)
    args = ap.parse_args(argv)
    if args.cmd == "aptos":
        path = write_aptos_dataset(args.out, args.n, args.seed, size=args.size, width=args.width,
                                   fmt=args.fmt, workers=args.workers,
                                   nuisance_rate=args.nuisance_rate)
    elif args.cmd == "clinic":
        write_clinic_folder(args.out, args.patients, args.seed, size=args.size)
        path = Path(args.out)
    else:
        path = make_contact_sheet(args.out, args.seed, args.size)
    print(path)


if __name__ == "__main__":
    main()
