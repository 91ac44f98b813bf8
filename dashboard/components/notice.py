"""The research-use banner that CLINICAL.md requires on every page, and the demo-model notice."""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from core.bundle import Bundle
from core.wording import (
    DEMO_NOTICE,
    RESEARCH_USE_NOTICE,
    RETFOUND_LICENSE_NOTICE,
    real_data_notice,
)


def research_notice_ui() -> None:
    st.warning(RESEARCH_USE_NOTICE, icon=":material/science:")


NEAR_CHANCE_QWK = 0.2  # below this validation kappa a model's grades are close to guessing


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
            st.info(f"**{b.name}**: {real_data_notice(b.manifest.provenance.training_data)}",
                    icon=":material/info:")
    weak = [f"{b.name} (validation kappa {qwk:.2f})" for b in bundles
            if (qwk := b.manifest.evaluation.get("kappa_quadratic")) is not None
            and qwk < NEAR_CHANCE_QWK]
    if weak:
        st.warning(f"Near-chance model: {', '.join(weak)}. Its grades are close to guessing on "
                   "its own validation data; do not rely on them.", icon=":material/trending_down:")
    return bool(demo)


def licence_notice_ui(bundles: Iterable[Bundle]) -> None:
    """RETFound-derived weights carry a non-commercial licence."""
    if any(b.manifest.tier in ("retfound", "lora") for b in bundles):
        st.caption(RETFOUND_LICENSE_NOTICE)
