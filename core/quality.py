"""Gradability gate: is this photo a fundus, and can a grader (or a model) trust it?

No learned model: the field fit, focus, exposure, contrast and colour statistics, each with a
human-readable reason, because "ungradable" must say what to re-take (CLINICAL.md). A photo that
is not a fundus at all is rejected before any grade is computed.

Rerun the calibration on a folder:  python -m core.quality FOLDER [--sheet /tmp/crops.png]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from core.preprocessing import FieldFit, crop_box, crop_to_field, find_fundus_field

__all__ = ["THRESHOLDS", "QualityReport", "QualityThresholds", "assess", "main"]

Level = Literal["good", "usable", "reject"]
NOT_FUNDUS = "not a fundus photograph"


@dataclass(frozen=True)
class QualityThresholds:
    """Every number the gate uses, in one place. Calibrated on generated degradations of the 32
    photos in ../shared/fundus_samples (blur, x0.2/x0.4 exposure, x2.2 gain, x0.3 contrast) and
    on the photos themselves; `python -m core.quality FOLDER` shows the metrics to re-check."""

    # Field: below half the circle inside the frame too much retina is missing to grade;
    # EyePACS routinely clips top/bottom to 0.88-0.93, which must stay "good".
    coverage_reject: float = 0.5
    coverage_usable: float = 0.8
    # Resolution: field diameter in px. Below ~256 the field is smaller than the models input (224-
    # 256 px) and microaneurysms (~1/100 of the field) are sub-pixel. retina.jpg: 240.
    diameter_reject: float = 150.0
    diameter_usable: float = 256.0
    # Focus = var(Laplacian(G smoothed)) / var(high-pass G) on the 512 px crop: a contrast-
    # independent share of fine detail. Gradable samples 0.04-0.16; a Gaussian blur of 1% of the
    # field diameter gives 0.007-0.029 (29 of 30 photos rejected); the two blurry EyeQ "reject"
    # photos 0.015 and 0.016; core.synthetic's strong_blur ~0.01.
    # EyeQ (82 EyePACS photos at 512 px, ../shared/realdata): every EyeQ "good" photo >= 0.067;
    # hazy EyeQ "reject" photos 0.052-0.058 were passing as good at 0.045, hence 0.06.
    focus_reject: float = 0.028
    focus_usable: float = 0.06
    # Exposure, on luma inside the field. Well-exposed photos have a mean of 90-160; the dimmest
    # EyeQ "good" one is 102. x0.2 exposure gives means of 10-26.
    dark_mean_reject: float = 30.0
    dark_mean_usable: float = 75.0
    dark_level: float = 20.0  # luma below this shows no retinal detail
    dark_fraction_reject: float = 0.5
    dark_fraction_usable: float = 0.25
    bright_mean_reject: float = 215.0  # x2.2 gain drives most photos past 215
    bright_mean_usable: float = 170.0  # the two washed-out EyeQ "reject" photos: 178, 193
    saturated_level: float = 235.0  # near-white: no detail left in any channel
    saturated_fraction_reject: float = 0.35
    saturated_fraction_usable: float = 0.05
    # Contrast = std of luma inside the field. Real photos 12-44; x0.3 contrast gives 4-11.
    contrast_reject: float = 5.0
    contrast_usable: float = 9.0
    # Colour of a fundus: red-dominant (R/G 1.13-2.5 in the samples, ~1.06 when over-exposed),
    # little blue (share <= 0.30), clearly coloured (chroma >= 0.18). Grey-scale images have
    # chroma ~0 and R/G ~1; blue scenes fail the blue share.
    min_red_green: float = 1.0
    max_blue_share: float = 0.36
    min_chroma: float = 0.08
    # Washed out: a fundus with so little colour has lost the red-on-orange contrast of
    # haemorrhages. EyeQ "good" photos >= 0.31; EyeQ "reject" 75_right 0.12.
    chroma_usable: float = 0.2
    # Two moderate problems together (e.g. dark AND soft) hide microaneurysms: reject.
    max_moderate_issues: int = 1
    # Metrics are computed on the field crop resampled to exactly this side: size-normalised.
    side: int = 512


THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class QualityReport:
    """The gate's verdict, its reasons in plain words, and the numbers behind them."""

    level: Level
    reasons: tuple[str, ...]
    metrics: dict[str, float]

    @property
    def gradable(self) -> bool:
        return self.level != "reject"

    @property
    def not_fundus(self) -> bool:
        """Rejected because it is not a fundus photograph at all (a wrong upload), as opposed
        to a fundus photo too poor to grade."""
        return NOT_FUNDUS in self.reasons


def assess(
    rgb: np.ndarray, field: FieldFit | None = None, thresholds: QualityThresholds = THRESHOLDS
) -> QualityReport:
    """Grade the photo's quality: good / usable / reject with reasons and metrics."""
    t = thresholds
    field = field if field is not None else find_fundus_field(rgb)
    metrics: dict[str, float] = {
        "field_found": float(field.found),
        "field_score": float(field.score),
        "coverage": round(float(field.coverage), 3),
        "field_diameter_px": round(2 * float(field.radius), 1),
    }
    if not field.found:
        return QualityReport("reject", ("no fundus field found", NOT_FUNDUS), metrics)
    crop, valid = _field_pixels(rgb, field, t.side)
    metrics.update(_measure(crop, valid, t))
    colour = _colour_problem(metrics, t)
    if colour:
        return QualityReport("reject", (NOT_FUNDUS, colour), metrics)
    severe, moderate = _problems(metrics, t)
    if severe:
        return QualityReport("reject", tuple(severe + moderate), metrics)
    if len(moderate) > t.max_moderate_issues:
        return QualityReport("reject", (*moderate, "several quality problems together"), metrics)
    return QualityReport("usable" if moderate else "good", tuple(moderate), metrics)


def _field_pixels(rgb: np.ndarray, field: FieldFit, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Field crop resampled to exactly `side` px (so metrics do not depend on the photo's size)
    and the mask of pixels that are retina: inside the frame, inside 90% of the radius."""
    h, w = rgb.shape[:2]
    crop = crop_to_field(rgb, field)
    x0, y0, n = crop_box(field)
    cols = (np.arange(n) + x0 >= 0) & (np.arange(n) + x0 < w)
    rows = (np.arange(n) + y0 >= 0) & (np.arange(n) + y0 < h)
    inside = (rows[:, None] & cols[None, :]).astype(np.uint8)
    interp = cv2.INTER_AREA if n > side else cv2.INTER_CUBIC
    crop = cv2.resize(crop, (side, side), interpolation=interp)
    inside = cv2.resize(inside, (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
    yy, xx = np.ogrid[:side, :side]
    c = (side - 1) / 2
    disc = ((xx - c) ** 2 + (yy - c) ** 2) <= (0.9 * side / 2) ** 2  # skip the rim
    valid = cv2.erode((disc & inside).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return crop, valid


def _measure(crop: np.ndarray, valid: np.ndarray, t: QualityThresholds) -> dict[str, float]:
    if valid.sum() < 100:
        return {"valid_pixels": float(valid.sum())}
    n = crop.shape[0]
    green = crop[:, :, 1].astype(np.float32)
    fine = cv2.Laplacian(cv2.GaussianBlur(green, (0, 0), 2.0), cv2.CV_32F, ksize=3)[valid]
    coarse = (green - _wide_blur(green, n / 30))[valid]
    rc, gc, bc = (crop[:, :, i][valid].astype(np.float32) for i in range(3))  # retina only
    r, g, b = float(rc.mean()), float(gc.mean()), float(bc.mean())
    mx, mn = np.maximum(np.maximum(rc, gc), bc), np.minimum(np.minimum(rc, gc), bc)
    lv = 0.299 * rc + 0.587 * gc + 0.114 * bc
    return {
        "focus": round(float(fine.var() / max(coarse.var(), 1e-3)), 4),
        "mean_brightness": round(float(lv.mean()), 1),
        "dark_fraction": round(float((lv < t.dark_level).mean()), 4),
        "saturated_fraction": round(float((lv >= t.saturated_level).mean()), 4),
        "contrast": round(float(lv.std()), 2),
        "red_green_ratio": round(r / max(g, 1.0), 3),
        "blue_share": round(b / max(r + g + b, 1.0), 3),
        "chroma": round(float(((mx - mn) / np.maximum(mx, 1.0)).mean()), 3),
    }


def _wide_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a wide sigma, computed at 1/4 size: 10x cheaper, same low-pass."""
    h, w = img.shape
    small = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / 4)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _colour_problem(m: dict[str, float], t: QualityThresholds) -> str | None:
    if "chroma" not in m:
        return "no usable pixels inside the field"
    if m["chroma"] < t.min_chroma:
        return "grey-scale image (fundus photographs are colour)"
    if m["red_green_ratio"] < t.min_red_green:
        return "colours are not red-dominant like a retina"
    if m["blue_share"] > t.max_blue_share:
        return "too much blue for a retina"
    return None


def _problems(m: dict[str, float], t: QualityThresholds) -> tuple[list[str], list[str]]:
    """(severe, moderate) reasons; severe ones alone make the photo ungradable."""
    severe: list[str] = []
    moderate: list[str] = []

    def check(bad: bool, worse: bool, reason_severe: str, reason_moderate: str) -> None:
        if worse:
            severe.append(reason_severe)
        elif bad:
            moderate.append(reason_moderate)

    cov = m["coverage"]
    clipped = f"field clipped (only {cov:.0%} inside the frame)"
    check(cov < t.coverage_usable, cov < t.coverage_reject, clipped, clipped)
    d = m["field_diameter_px"]
    low_res = f"low resolution (field {d:.0f} px across)"
    check(d < t.diameter_usable, d < t.diameter_reject, low_res, low_res)
    f = m["focus"]
    check(f < t.focus_usable, f < t.focus_reject, "out of focus", "slightly blurred")
    mean, dark = m["mean_brightness"], m["dark_fraction"]
    check(
        mean < t.dark_mean_usable or dark > t.dark_fraction_usable,
        mean < t.dark_mean_reject or dark > t.dark_fraction_reject,
        "too dark", "dark (under-exposed)",
    )
    sat = m["saturated_fraction"]
    check(
        mean > t.bright_mean_usable or sat > t.saturated_fraction_usable,
        mean > t.bright_mean_reject or sat > t.saturated_fraction_reject,
        "over-exposed", "bright (partly over-exposed)",
    )
    con = m["contrast"]
    check(con < t.contrast_usable, con < t.contrast_reject, "low contrast", "reduced contrast")
    check(m["chroma"] < t.chroma_usable, False, "", "washed out (little colour)")
    return severe, moderate


# ---------------------------------------------------------------- calibration command

_KEY_METRICS = ("focus", "mean_brightness", "saturated_fraction", "contrast", "red_green_ratio",
                "chroma")
_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm"}
_LEVEL_BGR = {"good": (60, 160, 60), "usable": (0, 140, 230), "reject": (40, 40, 220)}


def main(argv: list[str] | None = None) -> int:
    """Print one row per photo in FOLDER; optionally write a contact sheet of the crops."""
    ap = argparse.ArgumentParser(prog="python -m core.quality", description=main.__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--sheet", type=Path, help="write a PNG contact sheet of the field crops")
    args = ap.parse_args(argv)
    from core.errors import DRError
    from core.images import decode_image

    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in _SUFFIXES)
    if not files:
        print(f"no images in {args.folder}", file=sys.stderr)
        return 2
    print("| file | size | field (cx, cy, r, coverage) | level | reasons | "
          + " | ".join(_KEY_METRICS) + " |")
    print("|" + "---|" * (5 + len(_KEY_METRICS)))
    tiles = []
    for path in files:
        try:
            rgb = decode_image(path)
        except DRError as exc:
            print(f"| {path.name} | - | - | error | {exc} |" + " - |" * len(_KEY_METRICS))
            continue
        field = find_fundus_field(rgb)
        report = assess(rgb, field)
        print(_row(path.name, rgb, field, report))
        tiles.append(_tile(rgb, field, report, path.name))
    if args.sheet and tiles:
        _write_sheet(tiles, args.sheet)
        print(f"contact sheet: {args.sheet}")
    return 0


def _row(name: str, rgb: np.ndarray, field: FieldFit, report: QualityReport) -> str:
    where = (f"{'yes' if field.found else 'no'} ({field.cx:.0f}, {field.cy:.0f}, "
             f"{field.radius:.0f}, {field.coverage:.2f})")
    vals = " | ".join(
        f"{report.metrics[k]:.3g}" if k in report.metrics else "-" for k in _KEY_METRICS
    )
    reasons = "; ".join(report.reasons) or "-"
    size = f"{rgb.shape[1]}x{rgb.shape[0]}"
    return f"| {name} | {size} | {where} | {report.level} | {reasons} | {vals} |"


def _tile(rgb: np.ndarray, field: FieldFit, report: QualityReport, name: str, side: int = 220):
    crop = crop_to_field(rgb, field)
    tile = np.full((side + 64, side, 3), 255, np.uint8)
    tile[:side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    lines = [(name[:30], (0, 0, 0)), (report.level.upper(), _LEVEL_BGR[report.level]),
             ("; ".join(report.reasons)[:36], _LEVEL_BGR[report.level])]
    for i, (text, colour) in enumerate(lines):
        cv2.putText(tile, text, (3, side + 16 + 19 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return tile


def _write_sheet(tiles: list[np.ndarray], out: Path, cols: int = 6) -> None:
    blank = np.full_like(tiles[0], 255)
    tiles = tiles + [blank] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.concatenate(rows, axis=0)):
        raise OSError(f"could not write {out}; choose a writable .png path")


if __name__ == "__main__":
    raise SystemExit(main())
