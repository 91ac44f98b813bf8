"""Model bundles: a folder with manifest.json, safetensors weights and MODEL_CARD.md.

Loading never unpickles: weights are safetensors, their sha256 is checked against the manifest,
and the state dict must match the rebuilt architecture exactly (one error lists every bad key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from core.archs.registry import build_model
from core.errors import BundleError
from core.manifest import Manifest, WeightsSpec, parse_manifest

MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


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
    return Path(os.environ.get("DR_MODELS_DIR", DEFAULT_MODELS_DIR))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    path = bundle.weights_path
    actual = sha256_file(path)
    if actual != bundle.manifest.weights.sha256:
        raise BundleError(
            f"{path}: sha256 mismatch (manifest {bundle.manifest.weights.sha256[:16]}..., file "
            f"{actual[:16]}...). The weights were changed or corrupted; re-copy or re-export the "
            "bundle."
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_state_dict_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                          assign: bool = False) -> None:
    """strict=True semantics, but one error listing every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing}" if missing else "",
                 f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches {shapes}" if shapes else ""]
        raise BundleError(f"{source}: weights do not match the architecture: "
                          + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True, assign=assign)


def build_bundle_model(bundle: Bundle) -> nn.Module:
    """Rebuild the architecture and load the verified weights (baseline and RETFound tiers)."""
    if bundle.manifest.tier == "lora":
        from core.lora_bundle import build_lora_model

        return build_lora_model(bundle)
    arch = bundle.manifest.architecture
    state = read_weights(bundle)
    model = _build_on_meta(arch.builder, arch.kwargs)
    if model is not None:
        load_state_dict_exact(model, state, str(bundle.weights_path), assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model.eval()
    model = build_model(arch.builder, arch.kwargs)  # a buffer outside the state dict: build for real
    load_state_dict_exact(model, state, str(bundle.weights_path))
    return model.eval()


def _build_on_meta(builder: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """Skip the random initialisation the weights overwrite anyway (ViT-L: ~9 s on 2 cores)."""
    try:
        with torch.device("meta"):
            return build_model(builder, kwargs)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def save_bundle(out_dir: str | os.PathLike, manifest: Manifest, state_dict: dict[str, Any],
                model_card: str | None = None) -> Bundle:
    """Write weights (safetensors), then the manifest with their sha256 and the model card."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(folder / manifest.weights.file))
    return finalize_bundle(folder, manifest, model_card)


def finalize_bundle(folder: Path, manifest: Manifest, model_card: str | None = None) -> Bundle:
    """Hash the weights file already in `folder` and write manifest.json + MODEL_CARD.md.

    Used directly for LoRA bundles, whose adapter files are written by save_lora_adapters().
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
