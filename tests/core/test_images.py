"""core.images: formats decode to RGB uint8; every bad file gives a readable ImageDecodeError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from core.errors import ImageDecodeError
from core.images import (
    DEFAULT_LIMITS,
    SUPPORTED_SUFFIXES,
    DecodeLimits,
    decode_image,
    image_fingerprint,
    read_image_bytes,
)

# ---------------------------------------------------------------- builders


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _blocks(h: int = 40, w: int = 60) -> np.ndarray:
    """Left half red, right half blue: orientation and channel order are visible."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return arr


def _noise_jpeg(h: int = 200, w: int = 200) -> bytes:
    rng = np.random.default_rng(0)
    return _encode(Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)), "JPEG", quality=90)


def _noise_png(h: int = 200, w: int = 200) -> bytes:
    rng = np.random.default_rng(1)
    return _encode(Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)), "PNG")


def _dicom(pixels: np.ndarray | bytes, photometric: str, rows: int, cols: int, **kw) -> bytes:
    """A DICOM Part-10 file (preamble + 'DICM') built in memory with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # ophthalmic photo 8-bit
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = kw.pop("tsyntax", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    bits = kw.pop("bits", 8)
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = pixels if isinstance(pixels, bytes) else pixels.tobytes()
    if kw.pop("encapsulated", False):
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _fundus_like(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) * 0.45) ** 2
    arr = np.zeros((h, w, 3), np.uint8)
    arr[disc] = (200, 90, 30)
    return arr


def _assert_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)
    assert arr.flags.c_contiguous


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tol"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("JPEG", {"quality": 95}, 8),
    ],
)
def test_rgb_formats_keep_colours(fmt: str, kwargs: dict, tol: int) -> None:
    src = _blocks()
    out = decode_image(_encode(Image.fromarray(src), fmt, **kwargs))
    _assert_rgb(out, 40, 60)
    # compare away from the red/blue edge, where JPEG chroma subsampling blurs
    assert np.abs(out[:, :20].astype(int) - (255, 0, 0)).max() <= tol
    assert np.abs(out[:, 40:].astype(int) - (0, 0, 255)).max() <= tol


def test_jpeg_exif_orientation_6_rotates_clockwise() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(_blocks(40, 60)), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    _assert_rgb(out, 60, 40)  # width and height swapped
    assert out[:20, :, 0].mean() > 200 and out[:20, :, 2].mean() < 50  # red (left) is now on top
    assert out[40:, :, 2].mean() > 200 and out[40:, :, 0].mean() < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil_reference(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = np.zeros((40, 64, 3), np.uint8)
    src[:20, :32] = (255, 255, 255)  # one bright quadrant: any flip or rotation moves it
    data = _encode(Image.fromarray(src), "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), expected)


def test_png_16bit_grey_ramp_scales_to_full_8bit_range() -> None:
    levels = np.tile(np.arange(256), 4).reshape(32, 32)
    im = Image.fromarray((levels * 257).astype(np.uint16))  # 257*k maps exactly to k
    assert im.mode.startswith("I;16")
    out = decode_image(_encode(im, "PNG"))
    _assert_rgb(out, 32, 32)
    np.testing.assert_array_equal(out[:, :, 0], levels.astype(np.uint8))
    assert (out[:, :, 0] == out[:, :, 2]).all()


def test_tiff_16bit_grey_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    out = decode_image(_encode(Image.fromarray(ramp), "TIFF"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[32, 0, 0] <= 135  # midpoint stays mid-grey (clipping would give 255)


def test_png_16bit_rgb_ramp_maps_to_0_255() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    rgb16 = np.stack([ramp, ramp // 2, np.zeros_like(ramp)], axis=-1)
    ok, buf = cv2.imencode(".png", rgb16[:, :, ::-1])  # OpenCV writes BGR
    assert ok
    out = decode_image(buf.tobytes())
    _assert_rgb(out, 64, 64)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 125 <= out[-1, -1, 1] <= 128 and out[:, :, 2].max() == 0


def test_grey_and_palette_png() -> None:
    grey = decode_image(_encode(Image.fromarray(np.full((40, 40), 77, np.uint8)), "PNG"))
    assert (grey == 77).all()
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    out = decode_image(_encode(pal, "PNG"))
    _assert_rgb(out, 40, 40)
    assert (out == (10, 200, 30)).all()


def test_palette_transparency_is_composited_on_black() -> None:
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 250, 250, 250] + [0] * (254 * 3))
    out = decode_image(_encode(pal, "PNG", transparency=1))
    assert out.max() == 0


def test_rgba_and_la_are_composited_on_black() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    rgba[:20, :, 3] = 255
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:20] == (255, 0, 0)).all()
    assert (out[20:] == (128, 0, 0)).all()
    la = Image.fromarray(np.dstack([np.full((40, 40), 200, np.uint8)] * 2), "LA")
    la.putalpha(0)
    assert decode_image(_encode(la, "PNG")).max() == 0


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt: str) -> None:
    out = decode_image(_encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), fmt))
    _assert_rgb(out, 40, 40)
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 6


def test_sources_path_filelike_and_bytes_agree(tmp_path: Path) -> None:
    data = _encode(Image.fromarray(_blocks()), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    ref = decode_image(data)
    for src in (path, str(path), io.BytesIO(data), bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_image(src), ref)
    assert read_image_bytes(path) == data
    assert image_fingerprint(data) == image_fingerprint(path.read_bytes())
    assert len(image_fingerprint(data)) == 64 and image_fingerprint(data) != image_fingerprint(b"x")


def test_public_constants() -> None:
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm"} <= SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)
    assert DEFAULT_LIMITS.max_pixels >= 4928 * 3264 and DEFAULT_LIMITS.min_side == 32


# ---------------------------------------------------------------- DICOM


def test_dicom_rgb() -> None:
    src = _blocks()
    out = decode_image(_dicom(src, "RGB", 40, 60))
    np.testing.assert_array_equal(out, src)


def test_dicom_ybr_full() -> None:
    src = _blocks()
    ybr = convert_color_space(src, "RGB", "YBR_FULL")
    out = decode_image(_dicom(ybr, "YBR_FULL", 40, 60))
    assert np.abs(out.astype(int) - src.astype(int)).max() <= 2


def test_dicom_ybr_full_422() -> None:
    src = _blocks()  # colours constant over each horizontal pair, so 4:2:2 loses nothing
    ybr = convert_color_space(src, "RGB", "YBR_FULL")
    packed = np.empty((40, 30, 4), np.uint8)  # per pixel pair: Y0 Y1 Cb Cr
    packed[..., 0], packed[..., 1] = ybr[:, 0::2, 0], ybr[:, 1::2, 0]
    packed[..., 2], packed[..., 3] = ybr[:, 0::2, 1], ybr[:, 0::2, 2]
    out = decode_image(_dicom(packed.tobytes(), "YBR_FULL_422", 40, 60))
    assert np.abs(out.astype(int) - src.astype(int)).max() <= 2


def test_dicom_monochrome2_8_and_12_bit() -> None:
    grey = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 256
    out = decode_image(_dicom(grey.astype(np.uint8), "MONOCHROME2", 64, 64))
    _assert_rgb(out, 64, 64)
    np.testing.assert_array_equal(out[:, :, 1], grey)
    ramp12 = np.linspace(0, 4095, 64 * 64).astype(np.uint16).reshape(64, 64)
    out12 = decode_image(_dicom(ramp12, "MONOCHROME2", 64, 64, bits=12))
    assert out12[0, 0, 0] == 0 and out12[-1, -1, 0] == 255


def test_dicom_is_detected_by_magic_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"  # misleading extension
    path.write_bytes(_dicom(_blocks(), "RGB", 40, 60))
    assert decode_image(path).shape == (40, 60, 3)


def test_dicom_compressed_without_handler_names_syntax_and_fix() -> None:
    frame = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    data = _dicom(frame, "RGB", 40, 60, tsyntax=JPEGLSLossless, encapsulated=True)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name="eye.dcm")
    msg = str(info.value)
    assert "JPEG-LS" in msg and "pip install" in msg and "'eye.dcm'" in msg


def test_dicom_too_many_pixels_declared() -> None:
    data = _dicom(_blocks(), "RGB", 40, 60)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, limits=DecodeLimits(max_pixels=1000))


# ---------------------------------------------------------------- bad files


def _error(source, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(source, **kwargs)
    return str(info.value)


def test_empty_bytes_and_empty_file(tmp_path: Path) -> None:
    assert "empty" in _error(b"")
    path = tmp_path / "blank.jpg"
    path.write_bytes(b"")
    msg = _error(path)
    assert "empty" in msg and "blank.jpg" in msg


@pytest.mark.parametrize("builder", [_noise_jpeg, _noise_png])
def test_truncated_files(builder) -> None:
    data = builder()
    msg = _error(data[: len(data) // 2], name="cut.img")
    assert "truncated" in msg and "'cut.img'" in msg and "again" in msg


def test_truncated_header_is_called_corrupt_not_foreign() -> None:
    assert "truncated or corrupt" in _error(_noise_png()[:20])


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(3).integers(0, 256, 5000, np.uint8).tobytes()
    msg = _error(data)
    assert "not a recognised image" in msg and ".png" in msg


def test_pdf_and_text(tmp_path: Path) -> None:
    assert "PDF" in _error(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n" * 20)
    notes = tmp_path / "notes.txt"
    notes.write_text("patient 12, left eye, please grade\n" * 30)
    msg = _error(notes)
    assert "text file" in msg and "notes.txt" in msg


def test_unsupported_format_is_named() -> None:
    msg = _error(_encode(Image.new("RGB", (64, 64)), "GIF"))
    assert "GIF" in msg and "not supported" in msg and "JPEG or PNG" in msg


def test_too_small() -> None:
    msg = _error(_encode(Image.new("RGB", (10, 10)), "PNG"))
    assert "too small" in msg and "10x10" in msg


@pytest.mark.parametrize("side", [30000, 8000])
def test_decompression_bomb_is_refused_without_global_changes(side: int) -> None:
    before = (Image.MAX_IMAGE_PIXELS, getattr(Image, "LOAD_TRUNCATED_IMAGES", None))
    data = _png_with_declared_size(side, side)
    assert len(data) < 100
    assert "too large" in _error(data)
    from PIL import ImageFile

    assert (Image.MAX_IMAGE_PIXELS, getattr(Image, "LOAD_TRUNCATED_IMAGES", None)) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_many_bytes_from_path_filelike_and_bytes(tmp_path: Path) -> None:
    data = _noise_png(64, 64)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    small = DecodeLimits(max_bytes=1000)
    for src in (path, io.BytesIO(data), data):
        msg = _error(src, limits=small)
        assert "too large" in msg and "MB" in msg


def test_directory_missing_path_and_wrong_type(tmp_path: Path) -> None:
    assert "folder" in _error(tmp_path)
    msg = _error(tmp_path / "nope.jpg")
    assert "does not exist" in msg and "nope.jpg" in msg
    assert "file path, bytes" in _error(12345)  # type: ignore[arg-type]


# ---------------------------------------------------------------- reduced decoding


def test_large_jpeg_reduced_decode_keeps_min_side() -> None:
    data = _encode(Image.fromarray(_fundus_like(3264, 4928)), "JPEG", quality=85)
    full = decode_image(data)
    small = decode_image(data, min_side=448)
    assert full.shape == (3264, 4928, 3)
    assert 448 <= min(small.shape[:2]) < 3264 // 2
    assert abs(small.shape[1] / small.shape[0] - 4928 / 3264) < 0.01
    # same picture: the reduced decode resembles the downsampled full decode
    ref = cv2.resize(full, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(ref.astype(int) - small.astype(int)).mean() < 6


def test_png_reduced_decode_and_no_upscale() -> None:
    data = _encode(Image.fromarray(_fundus_like(800, 1000)), "PNG")
    small = decode_image(data, min_side=200)
    assert min(small.shape[:2]) >= 200 and small.shape[0] < 800
    assert decode_image(data, min_side=5000).shape == (800, 1000, 3)
    assert decode_image(data).shape == (800, 1000, 3)


# ---------------------------------------------------------------- fuzzing


_SEEDS = [
    _encode(Image.fromarray(_fundus_like(48, 64)), "JPEG", quality=80),
    _encode(Image.fromarray(_fundus_like(48, 64)), "PNG"),
    _dicom(_fundus_like(48, 64), "RGB", 48, 64),
]


@st.composite
def _mutated(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "flip", "truncate", "splice"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    pos = draw(st.integers(0, len(data)))
    return bytes(data[:pos] + draw(st.binary(min_size=1, max_size=64)) + data[pos:])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_only_image_decode_error(data: bytes) -> None:
    try:
        out = decode_image(data)
    except ImageDecodeError as exc:
        assert str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert min(out.shape[:2]) >= DEFAULT_LIMITS.min_side


# ---------------------------------------------------------------- real photos


def test_real_fundus_samples_decode(fundus_samples_dir: Path) -> None:
    paths = [
        p for p in sorted(fundus_samples_dir.iterdir()) if p.suffix.lower() in SUPPORTED_SUFFIXES
    ]
    assert len(paths) >= 20
    for path in paths:
        out = decode_image(path, min_side=256)
        assert out.dtype == np.uint8 and out.shape[2] == 3, path.name
        assert min(out.shape[:2]) >= min(256, min(Image.open(path).size)), path.name
