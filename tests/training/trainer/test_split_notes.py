"""A card names the split its thresholds were fitted on, and that split's note must agree."""

from __future__ import annotations

import numpy as np

from training.common.metrics import evaluate
from training.trainer.finalize import metrics_table
from training.trainer.splits import split_notes


def _card_lines(separate_calibration: bool) -> str:
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 3, 4] * 8)
    probs = rng.dirichlet(np.ones(5), size=len(y))
    metrics = evaluate(y, probs, referable_threshold=0.4, vision_threatening_threshold=0.3)
    metrics |= {"temperature": 1.0, "split_notes": split_notes(separate_calibration),
                "split": "calibration" if separate_calibration else "selection"}
    if separate_calibration:
        metrics["selection"] = evaluate(y, probs, referable_threshold=0.4,
                                        vision_threatening_threshold=0.3)
    return "\n".join(metrics_table(metrics))


def test_without_a_calibration_split_the_selection_note_says_it_fitted_the_thresholds():
    card = _card_lines(separate_calibration=False)
    assert "Operating thresholds (fitted on the selection split)" in card
    assert "not used to fit thresholds" not in card
    assert "- selection: selection split: chose the epoch, and temperature, thresholds" in card


def test_with_a_calibration_split_the_selection_note_keeps_it_apart():
    card = _card_lines(separate_calibration=True)
    assert "Operating thresholds (fitted on the calibration split)" in card
    assert "- selection: selection split: chose the epoch; not used to fit thresholds" in card
    assert "- calibration: calibration split: temperature, thresholds and cut points" in card
