"""Keep screening inside the folders an administrator allowed, and zips from attacking us.

Why: the dashboard lets a browser user name a server folder and upload zips. A folder must lie
inside a configured root after resolving `..` and symlinks; a zip is read into memory member by
member (never extracted), refusing `..`/absolute member names (zip-slip) and bombs (too many
members, too many bytes, absurd compression ratios).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from core import settings
from core.errors import ConfigError, PathNotAllowedError

ROOTS_ENV = settings.SCREEN_ROOTS_ENV


def roots_from_env(env: Mapping[str, str] | None = None) -> list[Path]:
    """Allowed screening roots from $DR_SCREEN_ROOTS (os.pathsep-separated); `env`: another
    mapping than the process's settings (core.settings)."""
    if env is None:
        return list(settings.current().screen_roots)
    return list(settings.parse_roots(env.get(ROOTS_ENV, "")))


def resolve_inside_roots(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> Path:
    """The real path of `path` if it lies inside one of `roots`; PathNotAllowedError otherwise.

    Relative paths are taken relative to the first root. `..` is refused outright; symlinks are
    resolved first, so a link pointing out of a root is refused too.
    """
    if not roots:
        raise PathNotAllowedError(
            "No screening folders are configured. Ask the administrator to set "
            f"{ROOTS_ENV} (or screening_roots in .streamlit/secrets.toml), or upload the photos.")
    raw = Path(path).expanduser()
    if ".." in raw.parts:
        raise PathNotAllowedError(f"'{path}' contains '..'. Give the folder's full path inside "
                                  "an allowed screening folder, without '..'.")
    real_roots = [Path(r).expanduser().resolve() for r in roots]
    candidate = raw if raw.is_absolute() else real_roots[0] / raw
    real = candidate.resolve()
    if not any(real == r or real.is_relative_to(r) for r in real_roots):
        why = " (it is a link that points outside)" if real != candidate.absolute() else ""
        raise PathNotAllowedError(
            f"'{path}' is outside the allowed screening folders{why}. Allowed: "
            f"{', '.join(str(r) for r in real_roots)}. Copy the photos into one of them.")
    if not real.exists():
        raise ConfigError(f"'{path}' does not exist inside the allowed folders. Check the name.")
    return real


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    """True when path's real location is inside a root (roots already resolved)."""
    real = path.resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


# ---------------------------------------------------------------- zips


@dataclass(frozen=True)
class ZipLimits:
    """Bounds for one uploaded zip (a clinic day is hundreds of 1-10 MB photos)."""

    max_members: int = 5_000
    max_total_bytes: int = 8_000_000_000
    max_member_bytes: int = 80_000_000  # same as core.images.DecodeLimits.max_bytes
    max_ratio: float = 200.0  # photos are already compressed; only bombs reach ratios like this
    ratio_min_bytes: int = 1_000_000  # small members cannot bomb, whatever their ratio


DEFAULT_ZIP_LIMITS = ZipLimits()


def _unsafe_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return True
    return ".." in PurePosixPath(name.replace("\\", "/")).parts


def check_zip(zf: zipfile.ZipFile, label: str, limits: ZipLimits = DEFAULT_ZIP_LIMITS
              ) -> list[zipfile.ZipInfo]:
    """The members to read, after refusing the whole archive if any member is hostile."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > limits.max_members:
        raise PathNotAllowedError(
            f"{label} holds {len(infos)} files (limit {limits.max_members}). Split it into "
            "smaller zips or screen a server folder instead.")
    total = 0
    for info in infos:
        if _unsafe_name(info.filename):
            raise PathNotAllowedError(
                f"{label} contains a file with an unsafe name ({info.filename!r}: absolute or "
                "with '..'). It was refused; re-create the zip from the photo folder.")
        if info.file_size > limits.max_member_bytes:
            raise PathNotAllowedError(
                f"{label}: member {info.filename!r} unpacks to {info.file_size / 1e6:.0f} MB "
                f"(limit {limits.max_member_bytes / 1e6:.0f} MB). Remove it from the zip.")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise PathNotAllowedError(
                f"{label}: member {info.filename!r} is compressed {ratio:.0f}:1, which only "
                "zip bombs do. The zip was refused; re-create it from the photo folder.")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise PathNotAllowedError(
            f"{label} unpacks to {total / 1e9:.1f} GB (limit {limits.max_total_bytes / 1e9:.1f} "
            "GB). Split it into smaller zips.")
    return [i for i in infos if not _hidden(i.filename)]


def _hidden(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def iter_zip(source: str | os.PathLike | bytes, label: str | None = None,
             limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for every non-hidden file, read into memory one at a time.

    The declared sizes are checked up front; the read itself is capped too, because a forged
    header can under-declare.
    """
    label = label or (f"'{source}'" if not isinstance(source, bytes) else "The zip file")
    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    try:
        try:
            zf = zipfile.ZipFile(fh)
        except zipfile.BadZipFile as exc:
            raise ConfigError(f"{label} is not a valid zip file ({exc}). Create it again.") from exc
        with zf:
            total = 0
            for info in check_zip(zf, label, limits):
                with zf.open(info) as member:
                    data = member.read(limits.max_member_bytes + 1)
                total += len(data)
                if len(data) > limits.max_member_bytes or total > limits.max_total_bytes:
                    raise PathNotAllowedError(f"{label}: {info.filename!r} unpacks to more than "
                                              "its header declares. The zip was refused.")
                yield info.filename, data
    finally:
        fh.close()
