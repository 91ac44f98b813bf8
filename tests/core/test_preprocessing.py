"""The one preprocessing path: field fit, crop, Ben Graham, augment, tensor; train == serve."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.images import decode_image
from core.preprocessing import (
    DISPLAY_MAX_SIDE,
    FieldFit,
    Preprocessed,
    PreprocessSpec,
    ben_graham,
    build_augment,
    crop_to_field,
    decode_min_side,
    find_fundus_field,
    finish_tensor,
    prepare_work,
    preprocess,
    preprocess_file,
    to_model_batch,
    work_side,
)


def make_fundus(
    h: int = 480,
    w: int = 640,
    cx: float = 320,
    cy: float = 240,
    r: float = 210,
    *,
    seed: int = 0,
    background: int = 0,
    notch: bool = False,
    dark_rim: bool = False,
    text: bool = False,
    gradient: float = 0.0,
) -> np.ndarray:
    """Orange-red vignetted disc with vessel lines and noise on a plain surround."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy) / r
    vignette = np.clip(1.0 - 0.45 * d**2, 0, 1)
    if dark_rim:
        vignette *= np.clip((1.0 - d) / 0.15, 0.4, 1.0)  # edge red ~44/255, like 367_right
    if gradient:
        vignette *= 1.0 + gradient * (xx - cx) / r
    img = np.stack([200 * vignette, 90 * vignette, 40 * vignette], axis=2)
    for _ in range(8):  # dark vessel lines radiating from an off-centre "disc"
        a = rng.uniform(0, 2 * math.pi)
        p0 = (int(cx + 0.3 * r), int(cy))
        p1 = (int(cx + r * math.cos(a)), int(cy + r * math.sin(a)))
        cv2.line(img, p0, p1, (90, 30, 20), 3)
    img += rng.normal(0, 4, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    inside = d <= 1.0
    if notch:  # a small square tab sticking out of the rim, like EyePACS cameras
        tab = np.zeros((h, w), np.uint8)
        nx, ny = int(cx + r * 0.707), int(cy - r * 0.707)  # on the rim, 45 degrees up-right
        cv2.rectangle(tab, (nx - 8, ny - 22), (nx + 22, ny + 8), 1, -1)
        img[tab > 0] = (150, 70, 35)
        inside |= tab > 0
    img[~inside] = background
    if text:  # burnt-in patient/time stamp in the corner and touching the rim
        cv2.putText(img, "2015-03-14 10:22 OD", (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
                    (255, 255, 255), 2)
        cv2.putText(img, "ID 4711", (int(cx - r - 60), int(cy + r * 0.2)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2)
    return img


FIELD_CASES = {
    "centred": dict(),
    "off-centre": dict(h=600, w=800, cx=520, cy=260, r=190),
    "clipped top/bottom": dict(h=480, w=720, cx=360, cy=240, r=300),
    "notched": dict(notch=True),
    "dark rim": dict(dark_rim=True),
    "text overlay": dict(text=True),
    "white surround": dict(background=255),
    "uneven illumination": dict(gradient=0.6),
    "small image": dict(h=120, w=160, cx=80, cy=60, r=52),
    "large image": dict(h=1536, w=2048, cx=1024, cy=768, r=700),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_field_found_within_two_percent(case: str) -> None:
    kw = {**dict(h=480, w=640, cx=320, cy=240, r=210), **FIELD_CASES[case]}
    img = make_fundus(**kw)
    fit = find_fundus_field(img)
    r = kw["r"]
    assert fit.found, fit
    assert abs(fit.cx - kw["cx"]) / r < 0.02, fit
    assert abs(fit.cy - kw["cy"]) / r < 0.02, fit
    assert abs(fit.radius - r) / r < 0.02, fit
    assert 0.5 < fit.score <= 1.0


def test_clipped_field_reports_coverage() -> None:
    fit = find_fundus_field(make_fundus(**FIELD_CASES["clipped top/bottom"]))
    # circle of r=300 centred in a 480-high frame: analytic share of its area inside the frame
    r, half = 300.0, 240.0
    seg = r * r * math.acos(half / r) - half * math.sqrt(r * r - half * half)
    expected = 1 - 2 * seg / (math.pi * r * r)
    assert fit.coverage == pytest.approx(expected, abs=0.02)
    assert fit.coverage < 0.95
    assert find_fundus_field(make_fundus()).coverage == pytest.approx(1.0, abs=0.01)


def test_synthetic_generator_fields_are_found() -> None:
    synthetic = pytest.importorskip("core.synthetic")
    for seed in range(6):
        s = synthetic.generate_fundus(seed % 5, seed, 320)
        cx, cy, r = s.field
        fit = find_fundus_field(s.image)
        assert fit.found, (seed, s.nuisances)
        assert max(abs(fit.cx - cx), abs(fit.cy - cy), abs(fit.radius - r)) / r < 0.02


def _natural_scene(h: int = 480, w: int = 640) -> np.ndarray:
    """Sky gradient over a green ground with a few objects: fills the frame, no round field."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = np.linspace([90, 150, 230], [160, 200, 250], h // 2)[:, None, :]
    img[h // 2 :] = (60, 140, 50)
    cv2.rectangle(img, (50, 200), (200, 420), (200, 60, 40), -1)
    cv2.circle(img, (450, 330), 70, (240, 200, 30), -1)
    return img


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((300, 400, 3), np.uint8),
        np.full((300, 400, 3), 128, np.uint8),
        np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8),
        _natural_scene(),
    ],
    ids=["black", "grey", "noise", "natural scene"],
)
def test_no_field_in_non_fundus_images(image: np.ndarray) -> None:
    assert not find_fundus_field(image).found


def test_crop_is_square_and_centred_on_the_field() -> None:
    kw = FIELD_CASES["off-centre"]
    img = make_fundus(**kw)
    fit = find_fundus_field(img)
    crop = crop_to_field(img, fit)
    assert crop.shape[0] == crop.shape[1] == pytest.approx(2 * kw["r"], abs=0.04 * kw["r"])
    ys, xs = np.nonzero(crop.max(axis=2) > 20)
    side = crop.shape[0]
    assert abs((xs.min() + xs.max()) / 2 - (side - 1) / 2) < 0.02 * side
    assert abs((ys.min() + ys.max()) / 2 - (side - 1) / 2) < 0.02 * side
    assert crop[0, 0].max() == 0 and crop[-1, -1].max() == 0


def test_crop_pads_clipped_field_with_black_and_blacks_out_the_surround() -> None:
    img = make_fundus(**FIELD_CASES["clipped top/bottom"])
    crop = crop_to_field(img, find_fundus_field(img))
    side = crop.shape[0]
    assert side > img.shape[0]  # taller than the frame: padded
    assert crop[:8].max() == 0 and crop[-8:].max() == 0  # padding rows are black
    white = make_fundus(background=255)
    wcrop = crop_to_field(white, find_fundus_field(white))
    assert wcrop[0, 0].max() == 0 and wcrop[-1, 0].max() == 0  # white surround -> black


def test_crop_without_field_is_centre_square() -> None:
    img = np.arange(300 * 500 * 3, dtype=np.uint32).reshape(300, 500, 3).astype(np.uint8)
    crop = crop_to_field(img, FieldFit(0, 0, 10, False, 0.0, 0.0))
    assert crop.shape == (300, 300, 3)
    np.testing.assert_array_equal(crop, img[:, 100:400])


@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "area"])
@pytest.mark.parametrize("size", [64, 160])
def test_tensor_shape_and_normalisation_follow_spec(size: int, interp: str) -> None:
    colour = np.array([200, 100, 50], np.uint8)
    flat = np.broadcast_to(colour, (240, 320, 3)).copy()
    spec = PreprocessSpec(input_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5),
                          interpolation=interp, crop_to_field=False)
    out = preprocess(flat, spec)
    assert out.tensor.shape == (3, size, size) and out.tensor.dtype == torch.float32
    expected = (colour / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    got = out.tensor.mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(out.tensor.std(dim=(1, 2)).max()) < 1e-5


def test_unknown_interpolation_is_refused() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        preprocess(make_fundus(), PreprocessSpec(interpolation="lanczos9"))


def test_preprocessed_carries_display_crop_and_field() -> None:
    img = make_fundus(h=1536, w=2048, cx=1024, cy=768, r=700)
    out = preprocess(img, PreprocessSpec(input_size=96))
    assert out.field.found
    h, w = out.cropped.shape[:2]
    assert h == w <= DISPLAY_MAX_SIDE and out.cropped.dtype == np.uint8
    given = preprocess(img, PreprocessSpec(input_size=96), field=out.field)
    assert torch.equal(given.tensor, out.tensor)


def _jpeg_bytes(img: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("ben", [False, True])
def test_training_path_equals_serving_path(tmp_path, ben: bool) -> None:
    """preprocess_file(path) == preprocess(decode_image(bytes)) for the same file and spec."""
    spec = PreprocessSpec(input_size=128, ben_graham=ben)
    data = _jpeg_bytes(make_fundus(h=900, w=1200, cx=600, cy=450, r=420))
    path = tmp_path / "eye.jpg"
    path.write_bytes(data)
    served = preprocess_file(path, spec)
    trained = preprocess(decode_image(data, min_side=decode_min_side(spec)), spec)
    from_file_object = preprocess_file(io.BytesIO(data), spec)
    assert torch.equal(served.tensor, trained.tensor)
    assert torch.equal(served.tensor, from_file_object.tensor)
    assert served.field == trained.field


def test_training_path_equals_serving_path_on_a_real_photo(fundus_samples_dir) -> None:
    path = fundus_samples_dir / "33_right.jpeg"
    spec = PreprocessSpec(input_size=224)
    served = preprocess_file(path, spec)
    trained = preprocess(decode_image(path.read_bytes(), min_side=decode_min_side(spec)), spec)
    assert torch.equal(served.tensor, trained.tensor)
    assert served.field.found


@pytest.mark.parametrize("ben", [False, True])
def test_cache_path_equals_preprocess(ben: bool) -> None:
    """prepare_work (what a training cache stores) + finish_tensor == preprocess, bit for bit."""
    spec = PreprocessSpec(input_size=48, ben_graham=ben)
    for img in (make_fundus(), make_fundus(h=120, w=160, cx=80, cy=60, r=40)):
        prepared = prepare_work(img, spec, display=False)
        assert prepared.work.shape == (work_side(spec), work_side(spec), 3)  # fixed cache rows
        assert prepared.cropped is None
        aug = build_augment(5)
        cached = finish_tensor(prepared.work.copy(), spec, augment=aug)
        direct = preprocess(img, spec, augment=build_augment(5)).tensor
        assert torch.equal(cached, direct)


def test_augment_is_deterministic_for_a_seed_and_keeps_surround_black() -> None:
    crop = crop_to_field(make_fundus(), find_fundus_field(make_fundus()))
    a1, a2 = build_augment(7)(crop), build_augment(7)(crop)
    b = build_augment(8)(crop)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == crop.shape and a1.dtype == np.uint8
    assert np.abs(a1.astype(int) - b.astype(int)).mean() > 1.0
    assert np.abs(a1.astype(int) - crop.astype(int)).mean() > 1.0
    for corner in (a1[0, 0], a1[0, -1], a1[-1, 0], a1[-1, -1]):
        assert corner.max() == 0
    gen = np.random.default_rng(3)
    aug = build_augment(gen)
    assert not np.array_equal(aug(crop), aug(crop))  # one generator: a new draw per call


def test_augment_runs_after_cropping_inside_preprocess() -> None:
    img = make_fundus(**FIELD_CASES["off-centre"])
    spec = PreprocessSpec(input_size=64)
    seen: list[np.ndarray] = []

    def record(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return x

    plain = preprocess(img, spec)
    recorded = preprocess(img, spec, augment=record)
    assert torch.equal(plain.tensor, recorded.tensor)  # an identity augment changes nothing
    (got,) = seen
    assert got.shape[0] == got.shape[1] == 2 * spec.input_size  # square, field-centred crop
    assert got[0, 0].max() == 0 and got[-1, -1].max() == 0
    ys, xs = np.nonzero(got.max(axis=2) > 20)
    assert abs((xs.min() + xs.max()) / 2 - (got.shape[1] - 1) / 2) < 3
    a = preprocess(img, spec, augment=build_augment(1)).tensor
    b = preprocess(img, spec, augment=build_augment(1)).tensor
    assert torch.equal(a, b) and not torch.equal(a, plain.tensor)


def test_ben_graham_changes_the_image_and_keeps_the_mask_black() -> None:
    img = make_fundus()
    crop = crop_to_field(img, find_fundus_field(img))
    bg = ben_graham(crop)
    assert bg.shape == crop.shape and bg.dtype == np.uint8
    assert np.abs(bg.astype(int) - crop.astype(int)).mean() > 20
    assert bg[0, 0].max() == 0 and bg[-1, -1].max() == 0 and bg[0, -1].max() == 0
    n = crop.shape[0]
    centre = bg[n // 2 - 20 : n // 2 + 20, n // 2 - 60 : n // 2 - 20].reshape(-1, 3)
    assert np.abs(np.median(centre, axis=0) - 128).max() < 25  # local mean removed -> ~128
    spec_on = PreprocessSpec(input_size=64, ben_graham=True)
    assert not torch.equal(preprocess(img, spec_on).tensor,
                           preprocess(img, PreprocessSpec(input_size=64)).tensor)


def test_to_model_batch_stacks_and_refuses_mixed_sizes() -> None:
    img = make_fundus()
    a = preprocess(img, PreprocessSpec(input_size=64))
    b = preprocess(img[:, ::-1].copy(), PreprocessSpec(input_size=64))
    batch = to_model_batch([a, b])
    assert batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch[0], a.tensor)
    with pytest.raises(ValueError):
        to_model_batch([])
    c = preprocess(img, PreprocessSpec(input_size=32))
    with pytest.raises(ValueError, match="shapes"):
        to_model_batch([a, c])
    assert isinstance(a, Preprocessed)
