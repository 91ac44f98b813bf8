"""One preprocessing path for training, grading, explanations and tests.

PreprocessSpec is the contract read from bundle manifests. `preprocess` is the only function that
turns a decoded photo into a model tensor, so what a model saw in training is exactly what it sees
when serving. Fundus photos differ wildly in framing (clipped top/bottom on EyePACS, off-centre,
white or grey surrounds), so the circular field is found first and the model always sees it
centred in a square.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a bundle wants its input prepared; stored in manifest.json under "preprocessing".

    Training and serving both read it from the bundle so nothing hard-codes a size or a mean.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "area"
    crop_to_field: bool = True  # crop the circular fundus field into a centred square first
    ben_graham: bool = False  # local colour subtraction (Graham 2015)


__all__ = [
    "DISPLAY_MAX_SIDE",
    "FieldFit",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessSpec",
    "Preprocessed",
    "WorkCrop",
    "ben_graham",
    "build_augment",
    "crop_box",
    "crop_to_field",
    "decode_min_side",
    "find_fundus_field",
    "finish_tensor",
    "prepare_work",
    "preprocess",
    "preprocess_file",
    "to_model_batch",
    "work_side",
]

DISPLAY_MAX_SIDE = 768  # the display crop is for a screen and a heatmap overlay, not for the model
_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}

# ---------------------------------------------------------------- field detection


@dataclass(frozen=True)
class FieldFit:
    """The circular field of view, in pixels of the image it was found on.

    coverage: fraction of the circle's area inside the frame (EyePACS often clips top/bottom).
    score: 0..1 how well a circle explains the foreground (edge support x fill x no spill).
    """

    cx: float
    cy: float
    radius: float
    found: bool
    coverage: float
    score: float


_WORK_SIDE = 384  # field search on a downscaled copy: 1 px here is ~0.5% of a typical radius
_MIN_SUPPORT = 0.3  # share of the in-frame circle that must show a field edge
_MIN_FILL = 0.6  # share of the in-frame circle that must be foreground (issue_2 is ~0.8)
_MAX_SPILL = 0.12  # foreground outside the circle / circle area (notches, text touching the rim)
_MIN_CONSIDERED = 0.3  # share of the circumference inside the frame (EyePACS clipped: >= 0.53)
_MIN_ARC = 0.25  # share of the full circumference seen as a field edge (issue_2.png: 0.49; the
# natural photo and the GUI screenshot fit arcs of 0.08-0.11 with the centre below the frame)
_SHORT_ARC = (0.12, 0.9)  # a heavily clipped field still counts if its short arc is a clean edge
# (support >= 0.9; the two non-fundus pictures reach 0.49 and 0.74), so the quality gate can say
# "field clipped" instead of "not a fundus"


def find_fundus_field(rgb: np.ndarray) -> FieldFit:
    """Fit the circular field of view; found=False when no plausible circular field exists.

    Foreground = pixels far from the frame's dominant border colour (black, white or grey
    surrounds), so dark rims, white backgrounds and uneven lighting all work. A RANSAC circle fit
    on the outer contour, ignoring points on the frame edge, copes with clipped fields, notches,
    straight cuts and text that touches the rim.
    """
    rgb = _as_rgb(rgb)
    h, w = rgb.shape[:2]
    small, sx, sy = _downscale(rgb, _WORK_SIDE)
    filled, pts = _foreground(small)
    fallback = FieldFit((w - 1) / 2, (h - 1) / 2, min(h, w) / 2, False, 0.0, 0.0)
    if pts is None:
        return fallback
    circle = _ransac_circle(pts, small.shape[:2])
    if circle is None:
        return fallback
    ccx, ccy, cr = circle
    support, considered, fill, spill, coverage = _circle_evidence(filled, ccx, ccy, cr)
    score = float(support * fill * max(0.0, 1.0 - spill / _MAX_SPILL * 0.5))
    sh, sw = filled.shape
    long_arc = considered >= _MIN_CONSIDERED and support * considered >= _MIN_ARC
    short_arc = considered >= _SHORT_ARC[0] and support >= _SHORT_ARC[1]
    found = (
        support >= _MIN_SUPPORT
        and (long_arc or short_arc)
        and fill >= _MIN_FILL
        and spill <= _MAX_SPILL
        and 0 <= ccx < sw
        and 0 <= ccy < sh
    )
    scale = (sx + sy) / 2
    return FieldFit(
        cx=float((ccx + 0.5) * sx - 0.5),
        cy=float((ccy + 0.5) * sy - 0.5),
        radius=float(cr * scale),
        found=bool(found),
        coverage=float(coverage),
        score=round(min(1.0, score), 4),
    )


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """Accept grey or RGBA arrays too: callers hand over whatever a decoder produced."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}; decode with core.images")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 2:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _downscale(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float, float]:
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return rgb, 1.0, 1.0
    nw, nh = max(2, round(w * s)), max(2, round(h * s))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, w / nw, h / nh


def _background_colour(small: np.ndarray) -> np.ndarray:
    """Dominant colour of the outer 2-pixel ring: the surround (black, white, grey)."""
    ring = np.concatenate(
        [small[:2].reshape(-1, 3), small[-2:].reshape(-1, 3),
         small[:, :2].reshape(-1, 3), small[:, -2:].reshape(-1, 3)]
    ).astype(np.int32)
    q = ring // 16
    keys = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    vals, counts = np.unique(keys, return_counts=True)
    return np.median(ring[keys == vals[counts.argmax()]], axis=0)


def _foreground(small: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Filled mask of the largest foreground blob and its outer contour points off the frame edge.

    Rims fading below ~0.35 x Otsu (~30/255) count as surround: the dark lens halo around
    EyePACS fields sits at 10-25 and is not retina, so the circle hugs the bright field."""
    bg = _background_colour(small)
    dist = np.abs(small.astype(np.int16) - bg.astype(np.int16)).max(axis=2).astype(np.uint8)
    otsu, _ = cv2.threshold(dist, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # 0.35 x Otsu keeps dark field rims (Otsu alone cuts into them) yet stays above the dark-grey
    # mats some viewers draw around the photo (issue_2.png: ~20 on a black surround).
    thresh = float(np.clip(0.35 * otsu, 10, 40))
    mask = (dist > thresh).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)  # drops text strokes and speckle
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    filled = np.zeros_like(mask)
    if n < 2:
        return filled, None
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[big, cv2.CC_STAT_AREA] < 0.01 * mask.size:
        return filled, None
    contours, _ = cv2.findContours(
        (labels == big).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    contour = max(contours, key=len).reshape(-1, 2)
    cv2.drawContours(filled, [contour.reshape(-1, 1, 2)], -1, 1, thickness=-1)
    h, w = mask.shape
    x, y = contour[:, 0], contour[:, 1]
    keep = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)  # frame edge is not the field edge
    pts = contour[keep].astype(np.float64)
    return filled, (pts if len(pts) >= 12 else None)


def _ransac_circle(pts: np.ndarray, shape: tuple[int, int]) -> tuple[float, float, float] | None:
    """Circle with most contour points on it and (almost) none outside, then least-squares refit."""
    h, w = shape
    sub = pts[:: max(1, len(pts) // 300)]
    rng = np.random.default_rng(0)  # fixed: the same photo always gets the same field
    idx = rng.integers(0, len(sub), size=(256, 3))
    cand = _circumcircles(sub[idx[:, 0]], sub[idx[:, 1]], sub[idx[:, 2]])
    r = cand[:, 2]
    ok = np.isfinite(r) & (r >= 0.1 * min(h, w)) & (r <= 1.2 * max(h, w))
    cand = cand[ok]
    if len(cand) == 0:
        return None
    res = np.hypot(sub[None, :, 0] - cand[:, None, 0], sub[None, :, 1] - cand[:, None, 1])
    res -= cand[:, 2:3]
    tol = np.maximum(1.5, 0.015 * cand[:, 2:3])
    votes = (np.abs(res) < tol).sum(axis=1) - 4 * (res > 3 * tol).sum(axis=1)
    best = cand[int(np.argmax(votes))]
    for _ in range(3):
        d = np.hypot(pts[:, 0] - best[0], pts[:, 1] - best[1]) - best[2]
        inl = pts[np.abs(d) < max(1.5, 0.015 * best[2])]
        if len(inl) < 8:
            break
        best = _lsq_circle(inl)
    if len(inl) < 8 or not np.all(np.isfinite(best)):
        return None
    # contour points are the outermost *inside* pixels: the true edge is half a pixel further
    return float(best[0]), float(best[1]), float(best[2] + 0.5)


def _circumcircles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    ax, ay, bx, by, cx, cy = a[:, 0], a[:, 1], b[:, 0], b[:, 1], c[:, 0], c[:, 1]
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    with np.errstate(divide="ignore", invalid="ignore"):
        a2, b2, c2 = ax**2 + ay**2, bx**2 + by**2, cx**2 + cy**2
        ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
        uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
        r = np.hypot(ax - ux, ay - uy)
    r[np.abs(d) < 1e-9] = np.nan
    return np.stack([ux, uy, r], axis=1)


def _lsq_circle(p: np.ndarray) -> np.ndarray:
    """Algebraic (Kasa) fit: x^2 + y^2 + Dx + Ey + F = 0."""
    x, y = p[:, 0], p[:, 1]
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    sol, *_ = np.linalg.lstsq(a, -(x**2 + y**2), rcond=None)
    cx, cy = -sol[0] / 2, -sol[1] / 2
    return np.array([cx, cy, math.sqrt(max(cx**2 + cy**2 - sol[2], 0.0))])


def _circle_evidence(
    filled: np.ndarray, cx: float, cy: float, r: float
) -> tuple[float, float, float, float, float]:
    """(edge support, share of circle in frame, fill, spill, coverage) of one circle."""
    h, w = filled.shape
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    delta = max(2.0, 0.03 * r)
    ox, oy = cx + (r + delta) * np.cos(theta), cy + (r + delta) * np.sin(theta)
    ix, iy = cx + (r - delta) * np.cos(theta), cy + (r - delta) * np.sin(theta)
    inside = (ox >= 1) & (ox <= w - 2) & (oy >= 1) & (oy <= h - 2)
    considered = float(inside.mean())
    support = 0.0
    if inside.any():
        o = filled[np.rint(oy[inside]).astype(int), np.rint(ox[inside]).astype(int)]
        i_ok = (ix[inside] >= 0) & (ix[inside] <= w - 1) & (iy[inside] >= 0) & (iy[inside] <= h - 1)
        i = np.zeros_like(o)
        i[i_ok] = filled[
            np.rint(iy[inside][i_ok]).astype(int), np.rint(ix[inside][i_ok]).astype(int)
        ]
        support = float(((i == 1) & (o == 0)).mean())
    yy, xx = np.ogrid[:h, :w]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    disc = d2 <= r * r
    in_frame = int(disc.sum())
    area = math.pi * r * r
    fill = float(filled[disc].mean()) if in_frame else 0.0
    spill = float((filled.astype(bool) & (d2 > (1.04 * r) ** 2)).sum() / area)
    coverage = min(1.0, in_frame / area)
    return support, considered, fill, spill, coverage


# ---------------------------------------------------------------- crop and Ben Graham


def crop_to_field(rgb: np.ndarray, field: FieldFit, margin: float = 0.0) -> np.ndarray:
    """Square crop centred on the field (side 2r(1+margin)), black where the frame ends.

    Outside the circle is set to black, so white or grey surrounds, notches and corner text look
    the same for every camera. Without a field: the centre square of the whole image.
    """
    rgb = _as_rgb(rgb)
    h, w = rgb.shape[:2]
    if not field.found:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        return np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side])
    x0, y0, side = crop_box(field, margin)
    out = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    centre = (field.cx - x0, field.cy - y0)
    # 0.99 r: the anti-aliased edge of a white surround would otherwise leave a bright ring
    return cv2.copyTo(out, _disc_mask(side, centre, 0.99 * field.radius), np.zeros_like(out))


def crop_box(field: FieldFit, margin: float = 0.0) -> tuple[int, int, int]:
    """(x0, y0, side) of the field's square crop in image pixels; x0/y0 may be negative."""
    side = max(2, int(round(2 * field.radius * (1 + margin))))
    return int(round(field.cx + 0.5 - side / 2)), int(round(field.cy + 0.5 - side / 2)), side


def _disc_mask(side: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """uint8 0/255 disc, drawn with 1/16-pixel precision (cv2 is ~10x faster than numpy here)."""
    mask = np.zeros((side, side), np.uint8)
    cx, cy = (int(round(v * 16)) for v in centre)
    cv2.circle(mask, (cx, cy), int(round(radius * 16)), 255, -1, lineType=cv2.LINE_8, shift=4)
    return mask


def ben_graham(rgb: np.ndarray, sigma_frac: float = 1 / 30) -> np.ndarray:
    """4*img - 4*blur(img) + 128 (Graham 2015): evens out illumination and camera colour casts.

    sigma is a fraction of the image side so the result does not depend on resolution; the
    inscribed circle (the field of a field-centred crop) is kept and the rest set to black.
    """
    rgb = _as_rgb(rgb)
    h, w = rgb.shape[:2]
    sigma = max(0.5, sigma_frac * min(h, w))
    blur = cv2.GaussianBlur(rgb, (0, 0), sigma)
    out = cv2.addWeighted(rgb, 4.0, blur, -4.0, 128.0)
    yy, xx = np.ogrid[:h, :w]
    r = 0.5 * min(h, w)
    mask = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) <= (0.98 * r) ** 2
    return out * mask[:, :, None].astype(np.uint8)


# ---------------------------------------------------------------- the one pipeline


@dataclass(frozen=True)
class Preprocessed:
    """What every consumer gets: the model tensor, the crop it came from (for display and
    heatmap overlays, same square region) and the field that was used."""

    tensor: torch.Tensor  # (3, S, S) float32, normalised with spec.mean/std
    cropped: np.ndarray  # RGB uint8 square crop before Ben Graham/augment, <= DISPLAY_MAX_SIDE
    field: FieldFit


@dataclass(frozen=True)
class WorkCrop:
    """The cacheable half of the pipeline: everything before augmentation.

    work: (2S, 2S, 3) uint8 field crop at twice the input size (Ben Graham applied if the spec
    says so); a training cache stores exactly this. cropped: display crop (None if not asked).
    """

    work: np.ndarray
    cropped: np.ndarray | None
    field: FieldFit


def prepare_work(
    rgb: np.ndarray, spec: PreprocessSpec, *, field: FieldFit | None = None, display: bool = True
) -> WorkCrop:
    """field -> square crop -> resample to work_side(spec) -> optional Ben Graham.

    Ben Graham and augmentation run at 2x the model resolution: cheap, and the final step to
    input_size (spec.interpolation) then removes their resampling artefacts.
    """
    rgb = _as_rgb(rgb)
    if spec.crop_to_field:
        field = field if field is not None else find_fundus_field(rgb)
        crop = crop_to_field(rgb, field)
    else:
        h, w = rgb.shape[:2]
        field = field or FieldFit((w - 1) / 2, (h - 1) / 2, min(h, w) / 2, False, 0.0, 0.0)
        crop = crop_to_field(rgb, FieldFit(field.cx, field.cy, field.radius, False, 0.0, 0.0))
    side = work_side(spec)
    up = _interp(spec) if _interp(spec) != cv2.INTER_AREA else cv2.INTER_LINEAR
    work = _resize_square(crop, side, cv2.INTER_AREA if crop.shape[0] > side else up)
    if spec.ben_graham:
        work = ben_graham(work)
    cropped = None
    if display:
        cropped = _resize_square(crop, min(crop.shape[0], DISPLAY_MAX_SIDE), cv2.INTER_AREA)
    return WorkCrop(work=work, cropped=cropped, field=field)


def finish_tensor(
    work: np.ndarray,
    spec: PreprocessSpec,
    *,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
) -> torch.Tensor:
    """Optional augment (on the square crop) -> resize to input_size -> normalise."""
    if augment is not None:
        work = np.ascontiguousarray(augment(work), dtype=np.uint8)
    final = _resize_square(np.ascontiguousarray(work), int(spec.input_size), _interp(spec))
    return _normalise(final, spec)


def preprocess(
    rgb: np.ndarray,
    spec: PreprocessSpec,
    *,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    field: FieldFit | None = None,
) -> Preprocessed:
    """THE path from a decoded photo to a model tensor: prepare_work + finish_tensor.

    field -> crop -> resample to 2x input -> optional Ben Graham -> optional augment -> resize
    to input_size -> normalise. Training (through the cache: the same two functions) passes
    `augment`; serving does not; nothing else differs.
    """
    prepared = prepare_work(rgb, spec, field=field)
    tensor = finish_tensor(prepared.work, spec, augment=augment)
    cropped = prepared.cropped if prepared.cropped is not None else prepared.work
    return Preprocessed(tensor=tensor, cropped=cropped, field=prepared.field)


def work_side(spec: PreprocessSpec) -> int:
    """Side of the working crop (and of a training cache's rows): twice the input size."""
    return 2 * int(spec.input_size)


def _interp(spec: PreprocessSpec) -> int:
    interp = _INTERP.get(spec.interpolation)
    if interp is None:
        raise ValueError(
            f"unknown interpolation {spec.interpolation!r}; use one of {sorted(_INTERP)}"
        )
    return interp


def _resize_square(img: np.ndarray, side: int, interp: int) -> np.ndarray:
    if img.shape[0] == side and img.shape[1] == side:
        return img
    if interp == cv2.INTER_AREA and side > img.shape[0]:
        interp = cv2.INTER_LINEAR  # INTER_AREA only means something when shrinking
    return cv2.resize(img, (side, side), interpolation=interp)


def _normalise(img: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    arr = img.astype(np.float32) * (1.0 / 255.0)
    arr -= np.asarray(spec.mean, np.float32)
    arr /= np.asarray(spec.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess_file(
    source: Any,
    spec: PreprocessSpec,
    *,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Preprocessed:
    """decode_image (reduced JPEG decode, shorter side >= 2*input_size) + preprocess."""
    from core.images import decode_image  # local: keeps this module importable on its own

    return preprocess(decode_image(source, min_side=decode_min_side(spec)), spec, augment=augment)


QUALITY_DECODE_SIDE = 768  # the quality gate measures field size and focus in decoded pixels


def decode_min_side(spec: PreprocessSpec) -> int:
    """Shorter side to decode at, for training and serving alike: at least the working crop
    (so it is rarely upsampled) and at least QUALITY_DECODE_SIDE, so that a photo's quality
    verdict does not depend on which model's input size asked for it."""
    return max(work_side(spec), QUALITY_DECODE_SIDE)


def to_model_batch(items: Sequence[Preprocessed]) -> torch.Tensor:
    """Stack tensors into (N, 3, S, S); all must share one spec."""
    if not items:
        raise ValueError("to_model_batch needs at least one Preprocessed item")
    shapes = {tuple(p.tensor.shape) for p in items}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch tensors of different shapes {sorted(shapes)}")
    return torch.stack([p.tensor for p in items])


# ---------------------------------------------------------------- augmentation


def build_augment(
    rng: np.random.Generator | int,
    *,
    hflip: bool = True,
    vflip: bool = False,
    rotate_deg: float = 180,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.1,
    hue: float = 0.02,
    scale: tuple[float, float] = (0.9, 1.1),
) -> Callable[[np.ndarray], np.ndarray]:
    """Training augmentation for square field crops; deterministic given the rng or seed.

    A fundus has no canonical rotation (left/right eyes, camera roll), hence flips and full
    rotations; colour jitter mimics camera and exposure differences. Black surround stays black.
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def apply(img: np.ndarray) -> np.ndarray:
        img = _as_rgb(img)
        h, w = img.shape[:2]
        flip_h = hflip and gen.random() < 0.5
        flip_v = vflip and gen.random() < 0.5
        angle = float(gen.uniform(-rotate_deg, rotate_deg)) if rotate_deg else 0.0
        zoom = float(gen.uniform(*scale))
        factors = [1.0 + float(gen.uniform(-m, m)) for m in (brightness, contrast, saturation)]
        shift = float(gen.uniform(-hue, hue)) if hue else 0.0
        if flip_h:
            img = img[:, ::-1]
        if flip_v:
            img = img[::-1]
        mat = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, zoom)
        img = cv2.warpAffine(
            np.ascontiguousarray(img), mat, (w, h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )
        return _colour_jitter(img, *factors, shift)

    return apply


def _colour_jitter(
    img: np.ndarray, bright: float, contrast: float, sat: float, hue_shift: float
) -> np.ndarray:
    keep = img.max(axis=2) > 4  # the field; the surround must stay black
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)
    f = img.astype(np.float32) * bright
    mean = float((f[keep] @ luma).mean()) if keep.any() else 0.0
    f = (f - mean) * contrast + mean
    grey = (f @ luma)[:, :, None]
    f = grey + (f - grey) * sat
    out = np.clip(f, 0, 255).astype(np.uint8)
    if hue_shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + round(hue_shift * 180)) % 180).astype(
            np.uint8
        )
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out[~keep] = 0
    return out
