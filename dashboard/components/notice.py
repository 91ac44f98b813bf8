"""The research-use banner that CLINICAL.md requires on every page, and the demo-model notice."""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from core.bundle import Bundle, tier_of
from core.grading import headline_figures, near_chance
from core.wording import (
    DEMO_NOTICE,
    RESEARCH_USE_NOTICE,
    encoder_notice,
    real_data_notice,
)


def research_notice_ui() -> None:
    st.warning(RESEARCH_USE_NOTICE, icon=":material/science:")




def demo_notice_ui(bundles: Iterable[Bundle]) -> bool:
    """Show DEMO_NOTICE once when any of `bundles` is a demo model; True if shown.

    Also warns about bundles whose own validation quadratic kappa is near chance: temperature
    scaling flattens such a model's probabilities, which can look like calm uncertainty.
    """
    bundles = list(bundles)
    demo = [b.name for b in bundles if b.manifest.demo]
    if demo:
        st.error(f"**DEMO MODEL** ({', '.join(demo)}). {DEMO_NOTICE}", icon=":material/warning:")
    for b in bundles:
        if not b.manifest.demo:
            made = b.manifest.provenance.training_data
            text = encoder_notice(made) if _is_encoder(b) else real_data_notice(made)
            st.info(f"**{b.name}**: {text}", icon=":material/info:")
    weak = [f"{b.name} ({_figures(b.manifest.evaluation)})" for b in bundles
            if headline_figures(b.manifest.evaluation) != (None, None)
            and near_chance(b.manifest.evaluation)]
    if weak:
        st.warning(f"Near-chance model: {', '.join(weak)}. Its grades are close to guessing on "
                   "data it was not tuned on; every answer is flagged for review.",
                   icon=":material/trending_down:")
    return bool(demo)


def _figures(evaluation: dict) -> str:
    auroc, kappa = headline_figures(evaluation)
    where = "cross-validated" if evaluation.get("cross_validation") else "validation"
    parts = [f"referable AUROC {auroc:.2f}" if auroc is not None else "",
             f"kappa {kappa:.2f}" if kappa is not None else ""]
    return f"{where} " + ", ".join(p for p in parts if p)


def licence_notice_ui(bundles: Iterable[Bundle]) -> None:
    """RETFound-derived weights carry a non-commercial licence (each tier names its notice).

    Only bundles that carry a licence: a ViT tier started from an encoder pretrained by this
    project holds no RETFound weights, and its manifest says so (license null).
    """
    notices = dict.fromkeys(tier_of(b).licence_notice for b in bundles if b.manifest.license)
    for notice in notices:
        if notice:
            st.caption(notice)


def _is_encoder(bundle: Bundle) -> bool:
    return "icdr_grade" not in bundle.manifest.outputs
