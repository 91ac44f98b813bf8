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
from training.evaluation.bootstrap import table

SECTION = "## Held-out evaluation"
WHAT = ("photos used for neither training, epoch choice nor calibration; quality gate on; "
        "grades as served; 95% bootstrap intervals, both eyes of a patient resampled together")


def attach_held_out(bundle_path: Path, results: dict[str, dict[str, Any]], *,
                    what: str = WHAT, merge: bool = True) -> None:
    """Merge {dataset label: bootstrap-style intervals} into the bundle's manifest and
    card; a label attached again replaces its earlier row (merge=False: the whole table is
    replaced). The weights are not touched. `what`: how the rows were measured, as the card
    and the Models page say it."""
    bundle = load_bundle(bundle_path)
    evaluation = dict(bundle.manifest.evaluation)
    held_out = dict(evaluation.get("held_out") or {}) if merge else {}
    rows = dict(held_out.get("results") or {}) | results
    evaluation["held_out"] = {"what": what, "results": rows}
    manifest = replace(bundle.manifest, evaluation=evaluation)
    card_path = bundle_path / MODEL_CARD_FILE
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    finalize_bundle(bundle_path, manifest, with_section(card, card_section(rows, what)))


def card_section(rows: dict[str, dict[str, Any]], what: str = WHAT) -> str:
    return f"{SECTION}\n\nOn {what}.\n\n{table(rows, first='dataset')}\n"


def with_section(card: str, section: str) -> str:
    """The card with `section` (its first line its heading) replacing an earlier section of
    that heading, else placed before the per-split metrics, else at the end."""
    heading = section.split("\n", 1)[0]
    if heading in card:
        return re.sub(re.escape(heading) + r".*?(?=\n## |\Z)", section.rstrip("\n") + "\n",
                      card, count=1, flags=re.S)
    head, sep, rest = card.partition("## Metrics of the best epoch")
    return head + section + sep + rest if sep else card.rstrip("\n") + "\n\n" + section
