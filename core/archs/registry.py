"""Builders named in bundle manifests: a name + kwargs rebuilds the exact network offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from core.errors import BundleError


def _timm_classifier(**kwargs: Any) -> nn.Module:
    from core.archs.baseline import DRClassifier

    kwargs = {k: v for k, v in kwargs.items() if k not in {"pretrained", "weights_path"}}
    return DRClassifier(pretrained=False, **kwargs)  # weights come from the bundle


def _retfound_vit(**kwargs: Any) -> nn.Module:
    from core.archs.retfound import build_retfound_vit

    return build_retfound_vit(**kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "timm_classifier": _timm_classifier,
    "retfound_vit": _retfound_vit,
}


def build_model(builder: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture with random weights (the caller loads them)."""
    if builder not in BUILDERS:
        raise BundleError(f"Unknown architecture builder {builder!r}; known: {sorted(BUILDERS)}")
    try:
        return BUILDERS[builder](**kwargs)
    except TypeError as exc:
        raise BundleError(f"Architecture {builder!r} rejected its kwargs {kwargs}: {exc}") from exc
