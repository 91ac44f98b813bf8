"""The research-use banner that CLINICAL.md requires on every page, and the demo-model notice."""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from core.bundle import Bundle
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE, RETFOUND_LICENSE_NOTICE


def research_notice_ui() -> None:
    st.warning(RESEARCH_USE_NOTICE, icon=":material/science:")


def demo_notice_ui(bundles: Iterable[Bundle]) -> bool:
    """Show DEMO_NOTICE once when any of `bundles` is a demo model; True if shown."""
    demo = [b.name for b in bundles if b.manifest.demo]
    if demo:
        st.error(f"**DEMO MODEL** ({', '.join(demo)}). {DEMO_NOTICE}", icon=":material/warning:")
    return bool(demo)


def licence_notice_ui(bundles: Iterable[Bundle]) -> None:
    """RETFound-derived weights carry a non-commercial licence."""
    if any(b.manifest.tier in ("retfound", "lora") for b in bundles):
        st.caption(RETFOUND_LICENSE_NOTICE)
