"""Photo, "what the model saw" and heatmap overlays; the opacity slider only re-blends."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from core.explain import Explanation
from core.overlay import overlay
from core.preprocessing import PreprocessSpec
from core.wording import HEATMAP_CAPTION

DEFAULT_OPACITY = 0.6  # at the map's peak; weaker regions get less


def model_input_rgb(tensor: torch.Tensor, spec: PreprocessSpec) -> np.ndarray:
    """Undo the normalisation of a (3, S, S) model input: the picture the network received."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    img = (tensor.detach().float().cpu() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def scaled_heatmap(explanation: Explanation, common_peak: float | None = None) -> np.ndarray:
    """The map as is, or rescaled by its raw peak against `common_peak` so weak maps look weak."""
    if not common_peak or common_peak <= 0:
        return explanation.heatmap
    return np.clip(explanation.heatmap * (explanation.raw_max / common_peak), 0.0, 1.0)


def opacity_ui(*, key: str) -> float:
    return float(st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key=key,
                           help="Colour strength where the map peaks (weaker regions get proportionally "
                                "less). Only re-blends the picture; nothing is recomputed."))


def overlay_image(cropped: np.ndarray, heatmap: np.ndarray, opacity: float) -> np.ndarray:
    """Heat-weighted: weak regions leave the photo as it is, so the lesions stay visible."""
    return overlay(cropped, heatmap, alpha=opacity, weighted=True)


def heatmap_caption() -> str:
    return HEATMAP_CAPTION
