"""Held-out figures of a DME output, per source, with bootstrap intervals over groups.

Only photos whose source grades DME count (Messidor-2, IDRiD); each photo is decided at the
bundle's own DME threshold, exactly as served (rows from training.evaluation.multi_source.graded_rows).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.bundle import MODEL_CARD_FILE, finalize_bundle, load_bundle
from training.evaluation.bootstrap import patient_resamples
from training.evaluation.held_out import with_section
from training.trainer.dme import DME_POSITIVE_CLASS, dme_figures

FIGURES = ("auroc", "sensitivity", "specificity")
SECTION = "## DME output on held-out photos"


def has_dme(rows: list[dict[str, Any]]) -> bool:
    """True when the bundle that graded these rows has a DME output."""
    return any(str(r.get("p_dme", "")) != "" for r in rows)


def dme_bootstrap(rows: list[dict[str, Any]], reps: int, seed: int = 0) -> dict[str, Any] | None:
    """AUROC / sensitivity / specificity at the served threshold with percentile 95% intervals,
    resampling groups (patients / examinations / images); None without labelled photos."""
    rows = [r for r in rows if str(r.get("dme_label", "")) != "" and str(r.get("p_dme", "")) != ""]
    if not rows:
        return None
    y = np.array([int(float(r["dme_label"])) for r in rows])
    p = np.array([float(r["p_dme"]) for r in rows])
    threshold = float(rows[0]["dme_threshold"])
    point = dme_figures(y, p, threshold)
    draws: dict[str, list[float]] = {k: [] for k in FIGURES}
    for idx in patient_resamples([r["patient"] for r in rows], reps, seed):
        figures = dme_figures(y[idx], p[idx], threshold)
        for key in FIGURES:
            if figures[key] is not None:
                draws[key].append(figures[key])
    out = {key: {"value": point[key],
                 "ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                 if len(v) >= reps // 2 else None} for key, v in draws.items()}
    return out | {"n_photos": len(rows), "n_patients": len({r["patient"] for r in rows}),
                  "n_dme": int(y.sum()), "threshold": threshold, "bootstrap_reps": reps}


def implied_negative_bootstrap(rows: list[dict[str, Any]], reps: int, seed: int = 0
                               ) -> dict[str, Any] | None:
    """For a source without DME labels: how often the output says DME on its ICDR grade 0-1
    photos, which have no exudates by the grade's definition (specificity against that
    implied label, with its interval); None without such photos or a DME output."""
    rows = [r for r in rows if str(r.get("p_dme", "")) != "" and int(r["grade"]) <= 1]
    if not rows:
        return None
    called = np.array([float(r["p_dme"]) >= float(r["dme_threshold"]) for r in rows])
    draws = [float((~called[idx]).mean())
             for idx in patient_resamples([r["patient"] for r in rows], reps, seed)]
    spec = {"value": float((~called).mean()),
            "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}
    none = {"value": None, "ci95": None}
    return {"auroc": none, "sensitivity": none, "specificity": spec, "n_photos": len(rows),
            "n_patients": len({r["patient"] for r in rows}), "n_dme": 0, "implied": True,
            "threshold": float(rows[0]["dme_threshold"]), "bootstrap_reps": reps}


def dme_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown rows: source, photos (with DME), AUROC, sensitivity, specificity."""
    lines = ["| source | photos (DME) | DME AUROC | sensitivity | specificity |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [_cell(r[k]) for k in FIGURES]
        lines.append(f"| {name} | {r['n_photos']} ({r['n_dme']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(figure: dict[str, Any]) -> str:
    value, ci = figure["value"], figure["ci95"]
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def attach_dme(bundle_path: Path, results: dict[str, dict[str, Any]]) -> None:
    """The DME table into the bundle's manifest (evaluation.held_out_dme, read by the Models
    page) and its card; the weights are not touched."""
    bundle = load_bundle(bundle_path)
    evaluation = dict(bundle.manifest.evaluation) | {"held_out_dme": {
        "what": "the held-out split's photos from sources with DME labels",
        "positive_class": DME_POSITIVE_CLASS, "results": results}}
    manifest = replace(bundle.manifest, evaluation=evaluation)
    card_path = bundle_path / MODEL_CARD_FILE
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    section = (f"{SECTION}\n\nPositive class: {DME_POSITIVE_CLASS}. A set without DME labels "
               "is measured on its grade 0-1 photos only (no exudates, so no DME, by the grade's "
               "definition): specificity alone. 95% intervals: bootstrap over patients / "
               f"examinations / images.\n\n{dme_table(results)}\n")
    finalize_bundle(bundle_path, manifest, with_section(card, section))
