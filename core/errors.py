"""The few domain exceptions of the project.

Every message says what went wrong *and* how to fix it, because the dashboard shows these
messages to clinicians verbatim (never a traceback).
"""

from __future__ import annotations


class DRError(Exception):
    """Base class: anything the user can act on. The dashboard catches exactly this."""


class ImageDecodeError(DRError):
    """A file could not be read as a photograph (empty, truncated, not an image, too big...)."""


class BundleError(DRError):
    """A model bundle is malformed: bad manifest, missing file, checksum or key mismatch."""


class CheckpointError(DRError):
    """A weights checkpoint (e.g. RETFound .pth) has an unexpected layout or is unsafe."""


class WeightsUnavailableError(DRError):
    """Pretrained weights were asked for but cannot be obtained offline."""


class ConfigError(DRError):
    """A configuration (training YAML, --set override, pattern) is invalid."""


class PathNotAllowedError(DRError):
    """A server-side path lies outside the configured screening roots."""
