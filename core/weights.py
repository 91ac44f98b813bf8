"""Weights files: sha256, verified safetensors reading and exact state-dict loading.

Why apart from core.bundle: the tiers (core.archs.tier_*) build models from verified tensors and
the bundle layer sits above them (it asks the tiers), so these primitives live below both.
Nothing here unpickles: safetensors only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import BundleError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU), only after its sha256 matched `sha256`."""
    actual = sha256_file(path)
    if actual != sha256:
        raise BundleError(
            f"{path}: sha256 mismatch (manifest {sha256[:16]}..., file {actual[:16]}...). The "
            "weights were changed or corrupted; re-copy or re-export the bundle.")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from exc


def write_tensors(path: Path, state_dict: dict[str, Any]) -> None:
    """Detached, contiguous CPU copies into one safetensors file."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(path))


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
