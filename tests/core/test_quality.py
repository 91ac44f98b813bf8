"""Quality gate: known degradations land on the expected level, non-fundus pictures are rejected."""

from __future__ import annotations

import csv
from collections import Counter

import cv2
import numpy as np
import pytest

from core.preprocessing import find_fundus_field
from core.quality import NOT_FUNDUS, THRESHOLDS, QualityThresholds, assess, main
from core.synthetic import Nuisance, generate_fundus


def _fundus(seed: int = 0, **nuisance: object) -> np.ndarray:
    return generate_fundus(seed % 5, seed, 384, nuisance=Nuisance(eye="right", **nuisance)).image


def _gain(img: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, frac_of_field: float) -> np.ndarray:
    r = find_fundus_field(img).radius
    return cv2.GaussianBlur(img, (0, 0), frac_of_field * 2 * r)


def _grey_disc() -> np.ndarray:
    grey = cv2.cvtColor(_fundus(1), cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _blue_scene() -> np.ndarray:
    """A sky-and-sea picture with a round sun: a circle, but nothing like a retina's colours."""
    img = np.zeros((384, 512, 3), np.uint8)
    img[:] = np.linspace([70, 120, 200], [20, 60, 140], 384)[:, None, :].astype(np.uint8)
    cv2.circle(img, (256, 192), 150, (150, 170, 230), -1)
    img = img + np.random.default_rng(2).integers(0, 12, img.shape, dtype=np.uint8)
    return img


def _blue_disc_on_black() -> np.ndarray:
    img = np.zeros((384, 512, 3), np.uint8)
    cv2.circle(img, (256, 192), 170, (60, 110, 190), -1)
    return img + np.random.default_rng(3).integers(0, 20, img.shape, dtype=np.uint8)


def _clipped(img: np.ndarray, keep: float) -> np.ndarray:
    """Keep only the middle `keep` share of rows: the frame cuts the field top and bottom."""
    h = img.shape[0]
    band = int(h * (1 - keep) / 2)
    return np.ascontiguousarray(img[band : h - band])


CASES = {
    "clean 0": ("good", lambda: _fundus(0)),
    "clean 1": ("good", lambda: _fundus(1)),
    "clean 2": ("good", lambda: _fundus(2)),
    "clipped top/bottom": ("good", lambda: _fundus(3, field_scale=1.08)),
    "strong blur": ("reject", lambda: _blur(_fundus(0), 0.02)),
    "generator strong blur": ("reject", lambda: generate_fundus(
        1, 5, 384, nuisance=Nuisance.strong_blur()).image),
    "mild blur": ("usable", lambda: _blur(_fundus(1), 0.006)),
    "very dark": ("reject", lambda: _gain(_fundus(0), 0.15)),
    "generator very dark": ("reject", lambda: generate_fundus(
        2, 6, 384, nuisance=Nuisance.very_dark()).image),
    "dim": ("usable", lambda: _gain(_fundus(2), 0.6)),
    "over-exposed": ("reject", lambda: _gain(_fundus(0), 3.0)),
    "40% of the field inside": ("usable", lambda: _clipped(_fundus(4), 0.45)),
    "60% of the field cut away": ("reject", lambda: _clipped(_fundus(4), 0.3)),
    "noise": ("reject", lambda: np.random.default_rng(0).integers(0, 256, (384, 512, 3),
                                                                   dtype=np.uint8)),
    "flat grey frame": ("reject", lambda: np.full((384, 512, 3), 128, np.uint8)),
    "blank black frame": ("reject", lambda: np.zeros((384, 512, 3), np.uint8)),
    "blue natural scene": ("reject", _blue_scene),
    "blue disc on black": ("reject", _blue_disc_on_black),
    "grey-scale disc": ("reject", _grey_disc),
}


def test_confusion_table_of_generated_degradations() -> None:
    table: Counter[tuple[str, str]] = Counter()
    wrong = []
    for name, (expected, make) in CASES.items():
        report = assess(make())
        table[(expected, report.level)] += 1
        if report.level != expected:
            wrong.append((name, expected, report.level, report.reasons, report.metrics))
    levels = ("good", "usable", "reject")
    rows = ["expected \\ got | " + " | ".join(levels)]
    rows += [f"{e} | " + " | ".join(str(table[(e, g)]) for g in levels) for e in levels]
    print("\n".join(rows))
    assert not wrong, wrong
    assert sum(table[(lv, lv)] for lv in levels) == len(CASES)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("strong blur", "out of focus"),
        ("very dark", "too dark"),
        ("over-exposed", "over-exposed"),
        ("noise", NOT_FUNDUS),
        ("flat grey frame", NOT_FUNDUS),
        ("blue natural scene", NOT_FUNDUS),
        ("blue disc on black", NOT_FUNDUS),
        ("grey-scale disc", NOT_FUNDUS),
    ],
)
def test_reasons_are_human_readable(name: str, reason: str) -> None:
    report = assess(CASES[name][1]())
    assert reason in report.reasons
    assert not report.gradable


def test_clipped_reason_says_how_much_is_inside() -> None:
    report = assess(_clipped(_fundus(4), 0.3))
    clipped = [r for r in report.reasons if r.startswith("field clipped")]
    assert clipped and "% inside the frame" in clipped[0]
    assert report.metrics["coverage"] < THRESHOLDS.coverage_reject


def test_good_photo_is_gradable_with_metrics() -> None:
    report = assess(_fundus(0))
    assert report.level == "good" and report.gradable and report.reasons == ()
    for key in ("focus", "mean_brightness", "dark_fraction", "saturated_fraction", "contrast",
                "coverage", "chroma"):
        assert key in report.metrics


def test_field_can_be_passed_in_and_thresholds_are_honoured() -> None:
    blurred = _blur(_fundus(0), 0.02)
    field = find_fundus_field(blurred)
    assert assess(blurred, field).level == "reject"
    lenient = QualityThresholds(focus_reject=0.0, focus_usable=0.0)
    assert assess(blurred, field, lenient).level == "good"


def test_focus_is_size_normalised() -> None:
    img = _fundus(0)
    big = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    small, large = assess(img).metrics["focus"], assess(big).metrics["focus"]
    assert large == pytest.approx(small, rel=0.35)


# ---------------------------------------------------------------- real photos

NON_FUNDUS = ("800px-Eye_disease_simulation__normal_vision.jpg", "LoadedImage.png")


def _labels(folder) -> dict[str, str]:
    with open(folder / "labels.csv", newline="") as fh:
        return {row["image"]: row["eyeq_quality"] for row in csv.DictReader(fh)}


def test_real_photos_gate(fundus_samples_dir) -> None:
    from core.images import decode_image

    labels = _labels(fundus_samples_dir)
    got = {name: assess(decode_image(fundus_samples_dir / name)) for name in labels}
    for name in NON_FUNDUS:
        assert got[name].level == "reject" and NOT_FUNDUS in got[name].reasons, name
    eyeq_reject = [n for n, q in labels.items() if q == "reject"]
    assert eyeq_reject and all(got[n].level != "good" for n in eyeq_reject)
    eyeq_ok = [n for n, q in labels.items() if q in ("good", "usable")]
    assert all(got[n].gradable for n in eyeq_ok)
    fundus = [n for n in labels if n not in NON_FUNDUS]
    assert all(got[n].metrics["field_found"] == 1.0 for n in fundus)


def test_cli_prints_a_row_per_photo_and_writes_a_sheet(tmp_path, capsys) -> None:
    cv2.imwrite(str(tmp_path / "eye.png"), cv2.cvtColor(_fundus(0), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((200, 300, 3), 128, np.uint8))
    sheet = tmp_path / "sheet.png"
    assert main([str(tmp_path), "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "| eye.png |" in out and "| good |" in out
    assert "| grey.png |" in out and NOT_FUNDUS in out
    assert cv2.imread(str(sheet)) is not None
