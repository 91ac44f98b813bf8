"""Router only: every page lives in dashboard/views/ (st.navigation)."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="DR screening (research use)", page_icon=":eye:", layout="wide")

PAGES = [
    st.Page("views/grade.py", title="Grade", icon=":material/visibility:", default=True),
    st.Page("views/batch.py", title="Batch screening", icon=":material/fact_check:"),
    st.Page("views/explain.py", title="Explain", icon=":material/insights:"),
    st.Page("views/compare.py", title="Compare tiers", icon=":material/compare:"),
    st.Page("views/models.py", title="Models", icon=":material/model_training:"),
]

st.navigation(PAGES).run()
