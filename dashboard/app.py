"""Router only: every page lives in dashboard/views/ (st.navigation)."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="DR screening (research use)", page_icon=":eye:", layout="wide")

PAGES = [
    st.Page("views/models.py", title="Models", icon=":material/model_training:", default=True),
]

st.navigation(PAGES).run()
