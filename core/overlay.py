"""Draw a heatmap over the cropped original photo.

A pure function, separate from explain(): the clinician must see the lesion pixels of the real
photo, not the normalised tensor the model saw, and the opacity slider re-blends without
recomputing the explanation.
"""

from __future__ import annotations

import cv2
import numpy as np

_COLORMAPS = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """HxW map in [0,1] -> HxWx3 RGB uint8 through an OpenCV colour map."""
    key = colormap.lower()
    if key not in _COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; use one of {sorted(_COLORMAPS)}.")
    unit = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(unit * 255).astype(np.uint8), _COLORMAPS[key])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(
    image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
    *, weighted: bool = False,
) -> np.ndarray:
    """Blend ``(1 - a) * image + a * colour(heatmap)``; the heatmap is resized to the image.

    ``a = alpha`` everywhere, or with ``weighted`` ``a = alpha * heat`` per pixel, so the photo
    stays readable where the map is weak and only the strong regions are coloured (what a
    clinician checking the lesions underneath needs). alpha 0 returns the photo unchanged;
    alpha 1 the colour map alone (unweighted) or where the map is 1 (weighted).
    """
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must be HxWx3 uint8, got {image.dtype} {image.shape}.")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be HxW, got shape {heat.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(np.nan_to_num(heat), (w, h), interpolation=cv2.INTER_LINEAR)
    color = colorize(heat, colormap)
    a = alpha * np.clip(np.nan_to_num(heat), 0.0, 1.0)[..., None] if weighted else alpha
    blended = (1.0 - a) * image.astype(np.float32) + a * color.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


FIELD_MIN_LEVEL = 12  # 0-255: brighter than this in any channel is retina, not the black surround
FIELD_RIM = 0.025  # the field's last 2.5% of the crop side counts as its edge, not as retina
# a map spread evenly puts ~0.3 of its weight off the retina (surround + rim); twice that is a
# map drawn to the border (docs/screenshots: the demo ViTs ~0.9, eyepacs-lite0 mostly 0.1-0.5)
OFF_FIELD_WARN = 0.6
_SHARE_SIDE = 256  # the share is measured on the photo brought down to this side


def share_outside_field(heatmap: np.ndarray, cropped_rgb: np.ndarray) -> float:
    """Fraction of the map's weight on the black surround of the cropped photo or on the very
    edge of the field, rather than on the retina.

    Maps that light the border (the clipped top of an EyePACS field, the corners of a ViT's
    input) say nothing about lesions; the card must say so rather than let colour over the
    edge be read as evidence. The retina is every pixel brighter than the near-black surround,
    small dark gaps closed (vessels are retina), then eroded by FIELD_RIM.
    """
    image = np.asarray(cropped_rgb)
    h, w = image.shape[:2]
    if max(h, w) > _SHARE_SIDE:  # a share needs no detail: ~1 ms instead of ~250 at 1500 px
        scale = _SHARE_SIDE / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, None)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    retina = (image.max(axis=2) > FIELD_MIN_LEVEL).astype(np.uint8)
    retina = cv2.morphologyEx(retina, cv2.MORPH_CLOSE, _disc(5))
    rim = max(1, int(round(FIELD_RIM * max(h, w))))
    retina = cv2.erode(retina, _disc(2 * rim + 1)).astype(bool)
    total = float(heat.sum())
    return float(heat[~retina].sum() / total) if total > 0 else 0.0


def _disc(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
