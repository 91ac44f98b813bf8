"""Calibrated grade probabilities as a plotly bar chart, the predicted grade highlighted."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import plotly.graph_objects as go

from core.grading import GRADE_NAMES, REFERABLE_MIN_GRADE

_REFERABLE = "#c0392b"
_NOT_REFERABLE = "#2e86c1"


def probability_figure(probs: Sequence[float], grade: int | None = None, *,
                       height: int = 260, compact: bool = False) -> go.Figure:
    """Bars per ICDR grade; referable grades (>= 2) in red, the predicted grade outlined.

    Built once per distinct input (plotly's validation costs ~20 ms a figure, paid on every
    rerun of a page with several result cards otherwise); callers must not modify the figure.
    """
    return _figure(tuple(float(p) for p in probs), grade, height, compact)


@lru_cache(maxsize=128)
def _figure(probs: tuple[float, ...], grade: int | None, height: int, compact: bool) -> go.Figure:
    labels = [f"{g} {name}" if not compact else str(g) for g, name in enumerate(GRADE_NAMES)]
    colours = [_REFERABLE if g >= REFERABLE_MIN_GRADE else _NOT_REFERABLE for g in range(5)]
    widths = [3 if g == grade else 0 for g in range(5)]
    fig = go.Figure(go.Bar(
        x=labels, y=[float(p) for p in probs], marker_color=colours,
        marker_line_color="black", marker_line_width=widths,
        text=[f"{p:.0%}" for p in probs], textposition="outside", cliponaxis=False,
        hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30 if not compact else 10, b=10),
        yaxis=dict(range=[0, 1.1], tickformat=".0%", title=None if compact else "probability"),
        xaxis=dict(title=None), showlegend=False,
        title=None if compact else dict(text="Calibrated probability per ICDR grade",
                                        font=dict(size=14)))
    return fig
