"""Safe decoding of any file a clinic hands over into RGB uint8 (H, W, 3).

Why a module of its own: uploads and clinic folders contain everything (phone JPEGs with EXIF
rotation, 16-bit PNG/TIFF exports, DICOM from fundus cameras, PDFs, truncated copies, hostile
files). Every caller gets the same limits and one error type, ImageDecodeError, whose message a
clinician can act on. Nothing here changes PIL's global state, so it is safe under threads.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from core.errors import ImageDecodeError

__all__ = [
    "DEFAULT_LIMITS",
    "SUPPORTED_SUFFIXES",
    "DecodeLimits",
    "decode_image",
    "image_fingerprint",
    "read_image_bytes",
]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
)

# Only these PIL plugins may parse user data: a short list keeps odd parsers (EPS, ...) away.
# (JPEG's opener also returns MPO, the multi-picture JPEG of some cameras.)
Image.init()  # register every plugin now: Image.open(formats=...) only looks up loaded ones
_PIL_FORMATS = tuple(f for f in ("JPEG", "PNG", "TIFF", "BMP", "DIB", "WEBP") if f in Image.OPEN)
_REEXPORT_TAIL = "re-export the photo as JPEG or PNG from the camera software and try again."
_REEXPORT = "R" + _REEXPORT_TAIL[1:]

Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds that keep one bad file from exhausting memory (a 4928x3264 photo is 16 MP).

    PIL's own bomb guard (2 x Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above that.
    """

    max_bytes: int = 80_000_000
    max_pixels: int = 60_000_000
    min_side: int = 32


DEFAULT_LIMITS = DecodeLimits()


def image_fingerprint(data: bytes) -> str:
    """sha256 hex of the file bytes: identifies a photo for dedupe and resume, whatever its name."""
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(
    source: Source, limits: DecodeLimits = DEFAULT_LIMITS, *, name: str | None = None
) -> bytes:
    """Read a path, file object or buffer, refusing oversized input before reading it all.

    Public so that callers who also need the fingerprint read the file once.
    """
    label = _label(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_path(Path(source), label, limits)
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_bytes + 1)
        except Exception as exc:
            raise ImageDecodeError(f"{label} could not be read ({exc}). Upload it again.") from exc
        if not isinstance(data, bytes | bytearray):
            raise ImageDecodeError(f"{label} is not a binary file. Open it in binary mode ('rb').")
        data = bytes(data)
    else:
        raise ImageDecodeError(
            f"Cannot read an image from a {type(source).__name__}; "
            "pass a file path, bytes or a binary file object."
        )
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(_too_many_bytes(label, len(data), limits))
    if not data:
        raise ImageDecodeError(f"{label} is empty (0 bytes). Copy the photo again from its source.")
    return data


def decode_image(
    source: Source,
    *,
    min_side: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    name: str | None = None,
) -> np.ndarray:
    """Decode a photo into a C-contiguous RGB uint8 array of shape (H, W, 3).

    min_side: if given, the decoder may return a smaller image (JPEG DCT scaling, integer
    reduction otherwise) whose shorter side stays >= min_side; it never upscales. None means
    full resolution. name: label for messages when source is bytes (e.g. the upload's filename).
    Every failure raises ImageDecodeError with a message saying what to do.
    """
    label = _label(source, name)
    data = read_image_bytes(source, limits, name=name)
    target = None if min_side is None else max(int(min_side), limits.min_side, 1)
    try:
        if data[128:132] == b"DICM":  # DICOM is told by its magic, never by the extension
            rgb = _decode_dicom(data, label, limits)
        else:
            rgb = _decode_pil(data, label, target, limits)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(
            f"{label} needs more memory to decode than is available. {_REEXPORT}"
        ) from exc
    except Exception as exc:  # boundary: no raw library error reaches the user
        raise ImageDecodeError(
            f"{label} is corrupt or truncated and could not be decoded ({type(exc).__name__}). "
            f"Copy the file again from its source, or {_REEXPORT_TAIL}"
        ) from exc
    _check_min_side(label, rgb.shape[1], rgb.shape[0], limits)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# ---------------------------------------------------------------- reading


def _label(source: object, name: str | None) -> str:
    if name:
        return f"'{name}'"
    if isinstance(source, str | os.PathLike):
        return f"'{os.fspath(source)}'"
    file_name = getattr(source, "name", None)
    if isinstance(file_name, str) and file_name:
        return f"'{file_name}'"
    return "The file"


def _read_path(path: Path, label: str, limits: DecodeLimits) -> bytes:
    try:
        if path.is_dir():
            raise ImageDecodeError(
                f"{label} is a folder, not an image file. Choose a photo inside it."
            )
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{label} does not exist. Check the path and file name.") from exc
    except OSError as exc:
        raise ImageDecodeError(
            f"{label} cannot be accessed ({exc.strerror or exc}). Check the path and permissions."
        ) from exc
    if size > limits.max_bytes:
        raise ImageDecodeError(_too_many_bytes(label, size, limits))
    try:
        with path.open("rb") as fh:
            return fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageDecodeError(
            f"{label} cannot be read ({exc.strerror or exc}). Check that it is a file you may read."
        ) from exc


def _too_many_bytes(label: str, size: int, limits: DecodeLimits) -> str:
    return (
        f"{label} is too large ({size / 1e6:.3g} MB; "
        f"the limit is {limits.max_bytes / 1e6:.3g} MB). "
        "Export a smaller JPEG or PNG, or ask the administrator to raise the limit."
    )


# ---------------------------------------------------------------- PIL formats


def _decode_pil(data: bytes, label: str, target: int | None, limits: DecodeLimits) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"{label} is too large: it declares more pixels than can be decoded safely (limit "
            f"{limits.max_pixels / 1e6:.3g} MP). Downscale it and export it again."
        ) from exc
    except Exception as exc:
        raise ImageDecodeError(_unidentified_message(data, label)) from exc
    with im:
        fmt = im.format
        _check_size(label, im.size, limits)
        if target is not None and fmt in ("JPEG", "MPO"):
            im.draft(None, _draft_size(im.size, target))
        try:
            im.load()
        except Exception as exc:
            raise ImageDecodeError(
                f"{label} is truncated or corrupt: the {fmt} data ends early or is damaged. "
                f"Copy the file again from its source; if it persists, {_REEXPORT_TAIL}"
            ) from exc
        im = _apply_exif_orientation(im)
        if target is not None and fmt not in ("JPEG", "MPO"):
            im = _reduce(im, target)
        return _to_rgb(im)


def _check_size(label: str, size: tuple[int, int], limits: DecodeLimits) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise ImageDecodeError(
            f"{label} is too large: {w}x{h} = {w * h / 1e6:.3g} MP (the limit is "
            f"{limits.max_pixels / 1e6:.3g} MP). Downscale it and export it again."
        )
    _check_min_side(label, w, h, limits)


def _check_min_side(label: str, w: int, h: int, limits: DecodeLimits) -> None:
    if min(w, h) < limits.min_side:
        raise ImageDecodeError(
            f"{label} is too small ({w}x{h} pixels; at least {limits.min_side} per side needed). "
            "Use the original photo, not a thumbnail or icon."
        )


def _draft_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    """Requested size for JPEG draft: PIL picks the largest 1/2^k scale not below it."""
    w, h = size
    short = min(w, h)
    if short <= target:
        return w, h
    return max(1, math.ceil(w * target / short)), max(1, math.ceil(h * target / short))


def _reduce(im: Image.Image, target: int) -> Image.Image:
    """Box-reduce by an integer factor (<= 8) keeping the shorter side >= target."""
    factor = min(8, min(im.size) // target)
    if factor < 2:
        return im
    if im.mode not in ("1", "L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "I", "F"):
        return im  # reduce() is not implemented for palette and I;16 modes
    return im.reduce(factor)


_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate as the camera recorded (EXIF or XMP); damaged metadata leaves pixels as stored.

    Not ImageOps.exif_transpose: it copies the whole image even when nothing needs rotating.
    """
    try:
        method = _TRANSPOSE.get(int(im.getexif().get(_ORIENTATION, 1)))
    except Exception:
        return im
    return im if method is None else im.transpose(method)


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode to RGB uint8; transparency is composited on black like a fundus background."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.float32)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255, neginf=0)
        if grey.size and float(grey.max()) <= 1.0:
            grey = grey * 255.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[:, :, 3:4].astype(np.uint16)
        return ((rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)


def _unidentified_message(data: bytes, label: str) -> str:
    """Tell a PDF, a text file, an unsupported format and a damaged image apart."""
    head = data[:64]
    if head.startswith(b"%PDF"):
        return (
            f"{label} is a PDF document, not an image. "
            "Export the photo itself from the camera software as JPEG or PNG."
        )
    for offset, magic, fmt in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"{label} is a {fmt} image, which is not supported. {_REEXPORT}"
    for magic in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return (
                f"{label} looks like an image but its header is truncated or corrupt. "
                f"Copy the file again from its source. {_REEXPORT}"
            )
    if _looks_like_text(data[:4096]):
        return f"{label} is a text file, not an image. Choose the photo itself ({_suffixes()})."
    return (
        f"{label} is not a recognised image (unknown content). "
        f"Supported files: {_suffixes()}. {_REEXPORT}"
    )


_SUPPORTED_MAGIC = (b"\xff\xd8", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")
_UNSUPPORTED_MAGIC = (
    (0, b"GIF8", "GIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIC"),
    (4, b"ftypavif", "AVIF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"\x00\x00\x01\x00", "icon (ICO)"),
)


def _looks_like_text(chunk: bytes) -> bool:
    if not chunk or b"\x00" in chunk:
        return False
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable / len(text) > 0.95


def _suffixes() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


# ---------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, label: str, limits: DecodeLimits) -> np.ndarray:
    """First frame of a DICOM photograph as RGB (RGB, YBR_FULL(_422), MONOCHROME1/2, PALETTE)."""
    import pydicom  # lazy: only DICOM users pay for the import
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ImageDecodeError(
            f"{label} is a DICOM file whose header is corrupt or incomplete. "
            "Export the study again from the camera or PACS."
        ) from exc
    if "PixelData" not in ds:
        raise ImageDecodeError(
            f"{label} is a DICOM file without an image (e.g. a report). "
            "Export the fundus photograph itself."
        )
    _check_size(label, (cols, rows), limits)
    _require_dicom_decoder(ds, label)
    arr = pixel_array(ds, index=0, as_rgb=True)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 8 if arr.dtype == np.uint8 else 16
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    arr = _dicom_to_uint8(arr, bits, int(ds.get("PixelRepresentation", 0) or 0))
    if photometric == "MONOCHROME1":
        arr = 255 - arr  # MONOCHROME1 stores white as 0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(
            f"{label} is a DICOM image with an unsupported layout ({photometric or 'unknown'}, "
            f"shape {arr.shape}). Export it as an RGB or greyscale photograph."
        )
    return arr


def _require_dicom_decoder(ds: object, label: str) -> None:
    """A compressed transfer syntax without a handler gets a message naming what to install."""
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.TransferSyntaxUID
    if not tsyntax.is_compressed:
        return
    try:
        available = get_decoder(tsyntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageDecodeError(
            f"{label} is a DICOM file compressed with '{tsyntax.name}' ({tsyntax}), which this "
            "installation cannot decompress. Install a decoder (pip install pylibjpeg "
            "pylibjpeg-libjpeg pylibjpeg-openjpeg, or pyjpegls for JPEG-LS), or export the "
            "DICOM uncompressed or as a JPEG/PNG photo."
        )


def _dicom_to_uint8(arr: np.ndarray, bits: int, signed: int) -> np.ndarray:
    """Scale BitsStored-deep samples to 0..255 (scaling, not clipping)."""
    if arr.dtype == np.uint8:
        return arr
    bits = min(max(bits, 1), 32)
    values = arr.astype(np.float64)
    if signed:
        values += 2.0 ** (bits - 1)
    values *= 255.0 / (2.0**bits - 1)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
