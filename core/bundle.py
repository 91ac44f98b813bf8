"""Model bundles: a folder with manifest.json, safetensors weights and MODEL_CARD.md.

Loading never unpickles: weights are safetensors, their sha256 is checked against the manifest,
and the state dict must match the rebuilt architecture exactly (one error lists every bad key).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import settings
from core.archs.tier import Tier
from core.archs.tiers import get_tier
from core.errors import BundleError
from core.manifest import Manifest, WeightsSpec, parse_manifest
from core.weights import load_state_dict_exact as load_state_dict_exact  # re-exported
from core.weights import read_verified, write_tensors
from core.weights import sha256_file as sha256_file  # re-exported

MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its parsed manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest.weights.file

    @property
    def key(self) -> str:
        """Identity for caches and result rows: name, version and weights hash."""
        return f"{self.manifest.name}@{self.manifest.version}#{self.manifest.weights.sha256[:12]}"


@dataclass(frozen=True)
class Discovery:
    """Bundles found under a models folder, and folders that failed to load (with why)."""

    bundles: list[Bundle]
    problems: list[tuple[Path, str]]


def models_dir() -> Path:
    """Where bundles live: $DR_MODELS_DIR or the repository's models/."""
    return settings.current().models_dir


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle folder's manifest (weights are checked when loaded)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST_FILE}; is this a model bundle folder?")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    manifest = parse_manifest(data, source=str(manifest_path))
    if not (folder / manifest.weights.file).is_file():
        raise BundleError(f"{folder}: weights file {manifest.weights.file!r} named in the "
                          "manifest is missing")
    return Bundle(folder, manifest)


def discover_bundles(root: str | os.PathLike | None = None) -> Discovery:
    """Every sub-folder of root holding a manifest; broken ones are reported, not fatal."""
    base = Path(root) if root is not None else models_dir()
    bundles, problems = [], []
    if not base.is_dir():
        return Discovery([], [(base, "models folder does not exist")])
    for folder in sorted(p for p in base.iterdir() if (p / MANIFEST_FILE).is_file()):
        try:
            bundles.append(load_bundle(folder))
        except BundleError as exc:
            problems.append((folder, str(exc)))
    return Discovery(bundles, problems)


def read_weights(bundle: Bundle) -> dict[str, torch.Tensor]:
    """Safetensors only, after the sha256 in the manifest matched the file."""
    return read_verified(bundle.weights_path, bundle.manifest.weights.sha256)


def tier_of(bundle: Bundle) -> Tier:
    """How the bundle's tier builds, shares and exports its model (core.archs.tier)."""
    return get_tier(bundle.manifest.tier)


def build_bundle_model(bundle: Bundle) -> nn.Module:
    """Rebuild the bundle's model with its verified weights, as its tier says, in eval mode."""
    tier = tier_of(bundle)
    if tier.needs_base:
        return build_over_base(base_of(bundle), bundle)
    arch = bundle.manifest.architecture
    return tier.build(arch, read_weights(bundle), str(bundle.weights_path))


def base_of(bundle: Bundle) -> Bundle:
    """The base bundle a bundle builds over (LoRA), loaded from beside it."""
    if not tier_of(bundle).needs_base or not bundle.manifest.base_bundle:
        raise BundleError(f"{bundle.name} is not a LoRA bundle (its tier builds over no base)")
    folder = bundle.path.parent / bundle.manifest.base_bundle
    if not folder.is_dir():
        raise BundleError(f"LoRA bundle {bundle.name!r} needs its base bundle "
                          f"{bundle.manifest.base_bundle!r} next to it ({folder} is missing).")
    return load_bundle(folder)


def build_over_base(base: Bundle, bundle: Bundle) -> nn.Module:
    """The base's model with `bundle`'s parts installed; `active_adapter` names whose parts
    a shared host holds (core.cache swaps them)."""
    base_model = build_bundle_model(base)
    read_weights(bundle)  # sha256 check against the manifest before any tensor is used
    model = tier_of(bundle).build_over(base_model, bundle.path)
    model.active_adapter = bundle.key
    return model.eval()


def save_bundle(out_dir: str | os.PathLike, manifest: Manifest, state_dict: dict[str, Any],
                model_card: str | None = None) -> Bundle:
    """Write weights (safetensors), then the manifest with their sha256 and the model card."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / manifest.weights.file, state_dict)
    return finalize_bundle(folder, manifest, model_card)


def save_model_bundle(out_dir: str | os.PathLike, manifest: Manifest, model: nn.Module,
                      model_card: str | None = None, *, tier: Tier | None = None) -> Bundle:
    """Save a model as its tier stores it (LoRA: adapters only), then manifest and card."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    file = (tier or get_tier(manifest.tier)).write_weights(folder, model, manifest.weights.file)
    return finalize_bundle(folder, dataclasses.replace(manifest, weights=WeightsSpec(file, "")),
                           model_card)


def finalize_bundle(folder: Path, manifest: Manifest, model_card: str | None = None) -> Bundle:
    """Hash the weights file already in `folder` and write manifest.json + MODEL_CARD.md.

    Used directly when the weights are already written (save_model_bundle, importers).
    """
    weights_path = folder / manifest.weights.file
    manifest = dataclasses.replace(
        manifest, weights=WeightsSpec(manifest.weights.file, sha256_file(weights_path)))
    (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    card = model_card if model_card is not None else render_model_card(manifest)
    (folder / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
    return Bundle(folder, manifest)


def render_model_card(manifest: Manifest) -> str:
    """A plain default model card; trainers pass a richer one with their metrics."""
    from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE

    lines = [f"# {manifest.name} (version {manifest.version})", "",
             f"- Tier: {manifest.tier}", f"- Architecture: {manifest.architecture.builder} "
             f"{json.dumps(manifest.architecture.kwargs, sort_keys=True)}",
             f"- Input: {manifest.preprocessing.input_size} px, Ben Graham "
             f"{'on' if manifest.preprocessing.ben_graham else 'off'}",
             f"- Training data: {manifest.provenance.training_data}",
             f"- Created: {manifest.created} (commit {manifest.git_commit or 'unknown'})", ""]
    if manifest.evaluation:
        lines += ["## Validation metrics", ""]
        lines += [f"- {k}: {v}" for k, v in manifest.evaluation.items() if not isinstance(v, (list, dict))]
        lines.append("")
    if manifest.demo:
        lines += [f"**{DEMO_NOTICE}**", ""]
    if manifest.license:
        lines += [f"License: {manifest.license}", ""]
    lines += [RESEARCH_USE_NOTICE, ""]
    return "\n".join(lines)
