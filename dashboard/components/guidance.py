"""Follow-up guidance for the chosen screening programme, worded as guideline text."""

from __future__ import annotations

import streamlit as st

from core.grading import PROGRAMMES, follow_up
from core.predict import Prediction


def programme_ui(*, key: str) -> str:
    """Which programme's guideline to show (US ADA/AAO or UK NHS DESP)."""
    choice = st.radio("Follow-up guidance programme", PROGRAMMES, key=key, horizontal=True)
    return choice or PROGRAMMES[0]


def guidance_ui(prediction: Prediction, programme: str) -> None:
    """Guideline action plus the programme's mapping caveat; never an instruction. DME is
    passed so a grade 0-1 photo with macular oedema is not told to rescreen."""
    g = follow_up(prediction.grade, programme, gradable=prediction.gradable,
                  dme=prediction.dme)
    st.markdown(f"**Follow-up guidance ({g.programme})** - category **{g.category}**")
    st.info(g.action, icon=":material/event:")
    if g.caveat:
        st.caption(g.caveat)
    st.caption("Guideline text for the reviewing clinician, not a referral decision.")
