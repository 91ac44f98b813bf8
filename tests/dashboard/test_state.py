"""Per-session memo: computed once per key; slider-driven values keep one copy, not one per position."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _script() -> None:
    import streamlit as st

    from dashboard.state import compute_count, remembered, remembered_latest

    calls = st.session_state.setdefault("calls", [])
    alpha = st.slider("alpha", 0.0, 1.0, 0.4, 0.1, key="alpha")
    remembered("prediction", lambda: calls.append("prediction") or "p")
    remembered_latest("overlay", alpha, lambda: calls.append(f"overlay {alpha}") or alpha)
    st.write(f"entries {compute_count()}")


def test_memo_computes_once_and_keeps_one_overlay():
    at = AppTest.from_function(_script).run()
    at.slider(key="alpha").set_value(0.7).run()
    at.slider(key="alpha").set_value(0.7).run()  # same value: nothing recomputed
    at.slider(key="alpha").set_value(0.4).run()
    assert at.session_state["calls"] == ["prediction", "overlay 0.4", "overlay 0.7", "overlay 0.4"]
    assert at.markdown[-1].value == "entries 2"  # one overlay entry, whatever the positions seen
