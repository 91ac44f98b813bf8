"""Models page: every installed bundle and its model card."""

from __future__ import annotations

import streamlit as st

from core.bundle import discover_bundles, models_dir
from core.wording import DEMO_NOTICE
from dashboard.components.notice import research_notice_ui

research_notice_ui()
st.title("Installed models")
found = discover_bundles()
st.caption(f"Bundles are read from `{models_dir()}` (set DR_MODELS_DIR to change).")
if not found.bundles:
    st.info("No model bundles installed yet. See models/README.md for how to train or import one.")
for bundle in found.bundles:
    m = bundle.manifest
    with st.expander(f"{m.name} {m.version} - tier: {m.tier}" + (" - DEMO" if m.demo else ""),
                     expanded=True):
        if m.demo:
            st.error(DEMO_NOTICE, icon=":material/warning:")
        card = bundle.path / "MODEL_CARD.md"
        st.markdown(card.read_text(encoding="utf-8") if card.is_file() else "_No model card._")
for folder, problem in found.problems:
    st.error(f"Could not load bundle `{folder.name}`: {problem}")
