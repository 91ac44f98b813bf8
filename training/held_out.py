"""Held-out figures on the bundle itself: `evaluate_cross_dataset --attach` writes them into the
manifest (`evaluation.held_out`) and a section of the model card, so the Models page shows them
beside the validation figures.

Why: a bundle's own metrics come from the split that chose its epoch and fitted its thresholds,
so they are optimistic by construction (demo-retfound 0.3.0: validation QWK 0.807, 0.735 on a
fresh held-out set). A research lead reads the Models page, not models/README.md.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.bundle import MODEL_CARD_FILE, finalize_bundle, load_bundle

SECTION = "## Held-out evaluation"
WHAT = ("photos used for neither training, epoch choice nor calibration; quality gate on; "
        "grades as served; 95% bootstrap intervals, both eyes of a patient resampled together")
_CARD_COLUMNS = (("referable_auroc", "referable AUROC"), ("kappa_quadratic", "quadratic kappa"),
                 ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def attach_held_out(bundle_path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Merge {dataset label: crossval.bootstrap-style intervals} into the bundle's manifest and
    card; a label attached again replaces its earlier row. The weights are not touched."""
    bundle = load_bundle(bundle_path)
    evaluation = dict(bundle.manifest.evaluation)
    held_out = dict(evaluation.get("held_out") or {})
    rows = dict(held_out.get("results") or {}) | results
    evaluation["held_out"] = {"what": WHAT, "results": rows}
    manifest = replace(bundle.manifest, evaluation=evaluation)
    card_path = bundle_path / MODEL_CARD_FILE
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    finalize_bundle(bundle_path, manifest, with_section(card, card_section(rows)))


def card_section(rows: dict[str, dict[str, Any]]) -> str:
    header = "| dataset | photos (patients, referable) | " + " | ".join(
        label for _, label in _CARD_COLUMNS) + " |"
    lines = [SECTION, "", f"On {WHAT}.", "", header, "|---" * (len(_CARD_COLUMNS) + 2) + "|"]
    for name, r in rows.items():
        cells = [_cell(r.get(key) or {}) for key, _ in _CARD_COLUMNS]
        lines.append(f"| {name} | {r.get('n_photos', '')} ({r.get('n_patients', '')}, "
                     f"{r.get('n_referable', '')}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


def _cell(entry: dict[str, Any]) -> str:
    value, ci = entry.get("value"), entry.get("ci95")
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def with_section(card: str, section: str) -> str:
    """The card with `section` replacing an earlier one, else before the per-split metrics."""
    if SECTION in card:
        return re.sub(re.escape(SECTION) + r".*?(?=\n## |\Z)", section.rstrip("\n") + "\n",
                      card, count=1, flags=re.S)
    head, sep, rest = card.partition("## Metrics of the best epoch")
    return head + section + sep + rest if sep else card.rstrip("\n") + "\n\n" + section
