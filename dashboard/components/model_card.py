"""Model-card pieces: validation metrics table, confusion matrix, reliability plot, curves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.grading import GRADE_NAMES, VT_GRADE_BY_PROBABILITY_WORDS

LABELS = {"n": "photos", "accuracy": "accuracy (5 grades)",
          "kappa_quadratic": "quadratic-weighted kappa", "kappa": "Cohen's kappa",
          "macro_auroc": "macro AUROC (5 grades)", "ece": "expected calibration error",
          "per_class_recall": "recall per grade (0-4)", "class_counts": "images per grade (0-4)",
          "referable": "referable DR", "vision_threatening": "vision-threatening DR",
          "temperature": "calibration temperature",
          "ordinal_thresholds": "grade cut points on the expected grade (ordinal rule)"}
_SCREENING_KEYS = ("sensitivity", "specificity", "auroc", "threshold", "n_positive", "n_negative")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# evaluation keys shown elsewhere: plots, the per-split columns and the cross-validation table
_NOT_ROWS = ("confusion_matrix", "reliability", "selection", "test", "cross_validation",
             "held_out", "split", "split_notes")
SPLIT_NAMES = {"selection": "selection split (chose the epoch)",
               "calibration": "calibration split (thresholds fitted here: optimistic)",
               "test": "held-out test fold"}


def split_of(evaluation: dict[str, Any]) -> str:
    """Which split the bundle's main figures come from, in words (older bundles: validation)."""
    return SPLIT_NAMES.get(evaluation.get("split", ""), "validation split")


def metrics_rows(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    """Flatten manifest.evaluation into (metric, value) rows; matrices and bins are plotted."""
    rows = []
    for key, value in evaluation.items():
        if key in _NOT_ROWS:
            continue
        if isinstance(value, dict):
            for sub in _SCREENING_KEYS:
                if sub in value:
                    rows.append({"metric": f"{LABELS.get(key, key)}: {sub.replace('_', ' ')}",
                                 "value": _fmt(value[sub])})
        elif isinstance(value, list):
            rows.append({"metric": LABELS.get(key, key),
                         "value": ", ".join(_fmt(v) for v in value)})
        else:
            rows.append({"metric": LABELS.get(key, key), "value": _fmt(value)})
    return rows


def grade_rule(cuts: Any, vt_grade_by_probability: bool = False) -> str:
    """How this bundle's grade is decided (core.grading.decide), in words."""
    band = "flags at the operating thresholds, then "
    if not cuts:
        return band + "the most probable grade they allow"
    return (band + "cut points " + ", ".join(f"{float(c):.3f}" for c in cuts)
            + " on the expected grade, kept inside the band the flags allow"
            + (VT_GRADE_BY_PROBABILITY_WORDS if vt_grade_by_probability else ""))


def confusion_figure(cm: list[list[int]]) -> go.Figure:
    """Counts annotated, shading by fraction of each true grade (rare grades stay readable)."""
    labels = [f"{g} {GRADE_NAMES[g]}" for g in range(len(cm))]
    frac = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in cm]
    fig = go.Figure(go.Heatmap(
        z=frac, x=[str(g) for g in range(len(cm))], y=labels,
        text=[[str(c) for c in row] for row in cm],
        texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="share of true grade"),
        hovertemplate="true %{y}<br>predicted %{x}<br>count %{text}<extra></extra>"))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Confusion matrix (validation)", font=dict(size=14)),
                      xaxis_title="predicted grade", yaxis_title="true grade",
                      xaxis=dict(type="category"), yaxis=dict(autorange="reversed"))
    return fig


def reliability_figure(rel: dict[str, list]) -> go.Figure:
    """Top-class confidence vs accuracy per bin (training.common.metrics.reliability_bins keys)."""
    conf, acc, count = rel.get("confidence", []), rel.get("accuracy", []), rel.get("count", [])
    pts = [(c, a, n) for c, a, n in zip(conf, acc, count or [None] * len(conf), strict=False)
           if c is not None and a is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="grey")))
    fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                             name="model", text=[f"n={p[2]}" for p in pts],
                             hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{text}"
                             "<extra></extra>"))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Reliability (calibrated, validation)", font=dict(size=14)),
                      xaxis=dict(title="confidence", range=[0, 1]),
                      yaxis=dict(title="accuracy", range=[0, 1]), legend=dict(x=0.02, y=0.98))
    return fig


def read_history(run_dir: str | None) -> list[dict[str, float]]:
    """Numeric columns of run_dir/history.csv; empty when the run folder is not here."""
    if not run_dir:
        return []
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def history_figure(history: list[dict[str, float]]) -> go.Figure:
    """One line per logged metric against epoch (losses and scores share the axis)."""
    keys = sorted({k for row in history for k in row if k != "epoch"})
    epochs = [row.get("epoch", i) + 1 for i, row in enumerate(history)]
    fig = go.Figure()
    for k in keys:
        fig.add_trace(go.Scatter(x=epochs, y=[row.get(k) for row in history],
                                 mode="lines+markers", name=k))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Training curves", font=dict(size=14)),
                      xaxis_title="epoch", legend=dict(orientation="h", y=-0.25))
    return fig


CV_COLUMNS = (("referable_auroc", "referable AUROC"), ("kappa_quadratic", "quadratic kappa"),
              ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def cross_validation_rows(evaluation: dict[str, Any], section: str = "cross_validation",
                          first: str = "model") -> list[dict[str, str]]:
    """training.evaluation.crossval's table (or, section "held_out", evaluate_cross_dataset --attach's):
    value (95% interval) per row, photos used for neither training, epoch choice nor
    calibration."""
    results = (evaluation.get(section) or {}).get("results") or {}
    rows = []
    for name, r in results.items():
        row = {first: name, "photos": str(r.get("n_photos", ""))}
        for key, label in CV_COLUMNS:
            entry = r.get(key) or {}
            value, ci = entry.get("value"), entry.get("ci95")
            row[label] = "n/a" if value is None else (
                f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}")
        rows.append(row)
    return rows
