"""The tier registry: tier name -> Tier object (core.archs.tier).

The three built-in tiers are registered here; another one (a DINOv2 or Swin encoder, a test's
toy tier) calls `register_tier` from its own module, and the manifest parser, bundle loading,
the cache, the predictor, training and export all find it by its name.
"""

from __future__ import annotations

import threading

from core.archs.tier import Tier
from core.archs.tier_baseline import BASELINE
from core.archs.tier_lora import LORA
from core.archs.tier_retfound import RETFOUND
from core.errors import ConfigError

_lock = threading.Lock()
_TIERS: dict[str, Tier] = {}


def register_tier(tier: Tier, *, replace: bool = False) -> Tier:
    """Make `tier` known by `tier.name`; registering a taken name needs replace=True."""
    if not tier.name:
        raise ConfigError(f"{type(tier).__name__} has no name; set the class attribute `name`")
    with _lock:
        if tier.name in _TIERS and not replace and _TIERS[tier.name] is not tier:
            raise ConfigError(f"tier {tier.name!r} is already registered")
        _TIERS[tier.name] = tier
    return tier


def unregister_tier(name: str) -> None:
    """Forget a tier (tests that register their own)."""
    with _lock:
        _TIERS.pop(name, None)


def get_tier(name: str) -> Tier:
    with _lock:
        tier = _TIERS.get(name)
    if tier is None:
        raise ConfigError(f"Unknown model tier {name!r}; known: {list(tier_names())}")
    return tier


def tier_names() -> tuple[str, ...]:
    with _lock:
        return tuple(_TIERS)


for _builtin in (BASELINE, RETFOUND, LORA):
    register_tier(_builtin)
