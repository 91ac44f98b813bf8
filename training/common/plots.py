"""PNG figures for run folders and model cards: confusion matrix, reliability, training curves.

matplotlib is imported lazily with the Agg backend so that training on a headless server (or
importing training.* in tests) never needs a display and never pays the import when unused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.grading import GRADE_NAMES
from training.common.metrics import ECE_BINS, ece, reliability_bins


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close, so long runs do not pile up figures."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def confusion_matrix_png(cm: Sequence[Sequence[int]], path: str | Path) -> Path:
    """Counts with row-normalised shading, so rare grades are as readable as grade 0."""
    plt = pyplot()
    m = np.asarray(cm, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true grade")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=9)
    ticks = [f"{g}" for g in range(m.shape[0])]
    ax.set_xticks(range(m.shape[1]), ticks)
    ax.set_yticks(range(m.shape[0]), [f"{g} {GRADE_NAMES[g]}" if g < len(GRADE_NAMES) else t
                                      for g, t in enumerate(ticks)])
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("true grade")
    ax.set_title("Confusion matrix")
    return save_figure(fig, path)


def reliability_png(y_true: Any, probs: Any, path: str | Path, n_bins: int = ECE_BINS) -> Path:
    """Reliability diagram of top-class confidence; the title carries the same ECE as metrics."""
    plt = pyplot()
    bins = reliability_bins(y_true, probs, n_bins)
    edges = np.asarray(bins["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres, acc, width=width, edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    err = ece(y_true, probs, n_bins)
    ax.set_title(f"Reliability (ECE = {err:.3f})" if err is not None else "Reliability")
    ax.legend(loc="upper left")
    axc.bar(centres, bins["count"], width=width, color="grey")
    axc.set_xlabel("top-class confidence")
    axc.set_ylabel("images")
    axc.set_xlim(0, 1)
    return save_figure(fig, path)


def _numeric_series(history: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    keys: list[str] = []
    for row in history:
        keys += [k for k, v in row.items() if k not in keys and k != "epoch"
                 and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: [float(r[k]) if isinstance(r.get(k), (int, float)) else math.nan
                for r in history] for k in keys}


def training_curves_png(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Losses (left) and every other numeric metric (right) per epoch, from the run's log rows.

    Non-numeric entries and missing values are skipped, so a row schema may grow between
    epochs (e.g. validation metrics only every few epochs) without breaking the figure.
    """
    plt = pyplot()
    series = _numeric_series(history)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses and not k.lower().startswith("lr")}
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group, title in ((ax_l, losses, "loss"), (ax_m, others, "metrics")):
        for name, values in group.items():
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if group:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {title} logged", ha="center", va="center",
                    transform=ax.transAxes)
    return save_figure(fig, path)
