"""Bundle discovery, the bundle selector and predictors loaded once per process.

Models are cached with st.cache_resource around core.cache.default_cache(), so every browser
session shares one copy of each model; the first load shows a spinner.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import streamlit as st

from core.archs.tiers import get_tier, tier_names
from core.bundle import Bundle, Discovery, discover_bundles, load_bundle
from core.cache import ModelCache, default_cache
from core.explain import METHODS, SCORECAM_MAX_CPU_PARAMS
from core.grading import near_chance
from core.predict import Predictor


class _TierLabels(Mapping[str, str]):
    """Tier name -> what the pages call it, from the tier registry (core.archs.tiers)."""

    def __getitem__(self, name: str) -> str:
        if name not in tier_names():
            raise KeyError(name)
        return get_tier(name).label or name

    def __iter__(self) -> Iterator[str]:
        return iter(tier_names())

    def __len__(self) -> int:
        return len(tier_names())


TIER_NAMES: Mapping[str, str] = _TierLabels()


def installed() -> Discovery:
    """Bundles under the models folder (cheap: manifests only), re-read on every run so a
    newly trained bundle shows up without restarting the server."""
    return discover_bundles()


def is_grader(bundle: Bundle) -> bool:
    """Encoder-only bundles ("features") cannot grade a photo."""
    return "icdr_grade" in bundle.manifest.outputs


def graders(found: Discovery) -> list[Bundle]:
    """Gradable bundles, the default first: models trained on real photos that carry their own
    figures come before demo and unmeasured ones (a synthetic-only model must never be what a
    clinician gets without choosing it), the stronger of them first: not near chance, then
    measured on held-out photos (cross-validation or a held-out split) before those with
    validation figures only, then the more held-out photos; otherwise by name."""
    def rank(b: Bundle) -> tuple:
        ev = b.manifest.evaluation
        measured = bool(ev.get("kappa_quadratic") is not None or (ev.get("referable") or {}))
        return (b.manifest.demo or not measured, near_chance(ev), -held_out_photos(ev), b.name)

    return sorted((b for b in found.bundles if is_grader(b)), key=rank)


def held_out_photos(evaluation: dict) -> int:
    """Photos behind the bundle's largest held-out or cross-validated figure (0: none)."""
    counts = [int(r.get("n_photos") or 0) for section in ("cross_validation", "held_out")
              for r in ((evaluation.get(section) or {}).get("results") or {}).values()
              if isinstance(r, dict)]
    return max(counts, default=0)


def bundle_label(bundle: Bundle) -> str:
    """Selector text: name, version, tier and a DEMO tag that cannot be missed."""
    m = bundle.manifest
    tag = "DEMO - " if m.demo else ""
    return f"{tag}{m.name} {m.version} ({TIER_NAMES.get(m.tier, m.tier)})"


def bundle_selector_ui(bundles: list[Bundle], *, key: str,
                       label: str = "Model bundle") -> Bundle | None:
    """Pick one grader; defaults to the first. None when nothing is installed."""
    if not bundles:
        return None
    index = st.selectbox(label, range(len(bundles)), format_func=lambda i: bundle_label(bundles[i]),
                         key=key, help="Bundles marked DEMO were trained on synthetic images.")
    return bundles[index if index is not None else 0]


@st.cache_resource(show_spinner=False)
def _shared_cache() -> ModelCache:
    return default_cache()


@st.cache_resource(show_spinner="Loading the model (first time only)...", max_entries=16)
def _predictor(path: str, key: str) -> Predictor:
    """One Predictor per bundle identity and process; `key` makes a retrained bundle reload.
    A Predictor holds no model (core.cache owns them), so keeping 16 here does not defeat
    DR_MODEL_CACHE_MB."""
    del key  # part of the cache key only
    return Predictor(load_bundle(path), cache=_shared_cache())


def predictor_for(bundle: Bundle) -> Predictor:
    """The process-wide predictor of `bundle` (raises core.errors.DRError subclasses)."""
    return _predictor(str(bundle.path), bundle.key)


def parameter_count(predictor: Predictor) -> int:
    """Parameters of the loaded model (LoRA: the shared host, adapters included)."""
    return predictor.n_params


def format_params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.0f} k"
    return str(n)


def explain_methods(predictor: Predictor) -> list[str]:
    """Methods that make sense for this model: attention rollout needs a ViT; ScoreCAM runs one
    forward per channel, so only small models (or a GPU) get it."""
    arch = predictor.manifest.explanation.arch
    small = parameter_count(predictor) < SCORECAM_MAX_CPU_PARAMS or predictor.device.type == "cuda"
    return [m for m in METHODS
            if (m != "attention_rollout" or arch == "vit") and (m != "scorecam" or small)]
