"""Photo, "what the model saw" and heatmap overlays; the opacity slider only re-blends."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from core.explain import Explanation
from core.grading import GRADE_NAMES
from core.overlay import OFF_FIELD_WARN, overlay, share_outside_field
from core.preprocessing import PreprocessSpec
from core.wording import HEATMAP_CAPTION, heatmap_off_field

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


def off_field_note(heatmap: np.ndarray, cropped: np.ndarray) -> str | None:
    """A warning when the map is drawn to the border rather than the retina, else None."""
    share = share_outside_field(heatmap, cropped)
    return heatmap_off_field(share) if share >= OFF_FIELD_WARN else None


def show_off_field_note(heatmap: np.ndarray, cropped: np.ndarray, where=st) -> None:
    """Under the heatmap, in the same column, so the warning sits beside what it is about."""
    note = off_field_note(heatmap, cropped)
    if note:
        where.warning(note, icon=":material/border_outer:")


def heatmap_caption() -> str:
    return HEATMAP_CAPTION


def displayed_target(grade: int | None) -> int | str:
    """What a heatmap explains by default: the grade on the card (issue 12), not the argmax."""
    return "predicted" if grade is None else int(grade)


def target_caption(exp: Explanation, displayed_grade: int | None) -> str:
    """Say whether this map explains the grade the user sees, or something else."""
    if exp.target_class is None:
        return f"{exp.method}: {exp.target} (not a single grade)"
    if exp.target_class == displayed_grade:
        return (f"{exp.method}: explains the displayed grade "
                f"{displayed_grade} ({GRADE_NAMES[displayed_grade]})")
    return (f"{exp.method}: explains grade {exp.target_class} "
            f"({GRADE_NAMES[exp.target_class]}) - NOT the displayed grade")


def target_label(target: int | str, displayed_grade: int | None) -> str:
    if target == displayed_grade:
        return f"the displayed grade ({target} {GRADE_NAMES[int(target)]})"
    if target == "referable":
        return "referable (grades 2-4) - not the displayed grade"
    if target == "dme":
        return DME_TARGET_LABEL
    return f"grade {target} ({GRADE_NAMES[int(target)]}) - not the displayed grade"


DME_TARGET_LABEL = "DME output (macular oedema)"


def target_ui(displayed_grade: int | None, *, key: str, has_dme: bool = False) -> int | str:
    """Which class the heatmap explains: the displayed grade first; others labelled as such.
    The DME output is offered only by a bundle that has one (Predictor.has_dme)."""
    first = displayed_target(displayed_grade)
    options = ([first] + [g for g in range(len(GRADE_NAMES)) if g != first] + ["referable"]
               + (["dme"] if has_dme else []))
    choice = st.selectbox("Heatmap explains", options, key=key,
                          format_func=lambda t: target_label(t, displayed_grade))
    return first if choice is None else choice
