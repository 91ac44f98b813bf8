"""The research-use banner that CLINICAL.md requires on every page."""

from __future__ import annotations

import streamlit as st

from core.wording import RESEARCH_USE_NOTICE


def research_notice_ui() -> None:
    st.warning(RESEARCH_USE_NOTICE, icon=":material/science:")
