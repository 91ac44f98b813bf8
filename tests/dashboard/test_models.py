"""Models page through AppTest: cards, metrics, confusion matrix, reliability, curves, problems."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.manifest import Provenance
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from dashboard.components.model_card import (
    confusion_figure,
    metrics_rows,
    read_history,
    reliability_figure,
)
from tests.dashboard.pages_support import TIMEOUT, VIEWS, all_text, texts
from tests.helpers import make_tiny_bundle

PAGE = str(VIEWS / "models.py")
EVALUATION = {
    "n": 50, "accuracy": 0.62, "kappa_quadratic": 0.71, "macro_auroc": 0.8,
    "referable": {"sensitivity": 0.9, "specificity": 0.7, "auroc": 0.85, "threshold": 0.3},
    "confusion_matrix": [[10, 2, 0, 0, 0], [3, 5, 1, 0, 0], [0, 2, 8, 1, 0], [0, 0, 1, 4, 1],
                         [0, 0, 0, 1, 4]],
    "reliability": {"edges": [0, 0.5, 1], "confidence": [0.4, 0.8], "accuracy": [0.3, None],
                    "count": [20, 0]},
}

HELD_OUT = {"held_out": {"what": "photos used for nothing else", "results": {"seed 4321": {
    "n_photos": 382, "n_patients": 382, "kappa_quadratic": {"value": 0.735, "ci95": [0.68, 0.78]},
    "referable_auroc": {"value": 0.924, "ci95": [0.898, 0.948]}}}}}


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,train_loss,val_kappa_quadratic\n0,1.5,0.2\n1,1.1,0.5\n")
    make_tiny_bundle(root, "evaluated", evaluation=EVALUATION | HELD_OUT,
                     provenance=Provenance("synthetic 200 images", run_dir=str(run)))
    make_tiny_bundle(root, "plain", demo=False)
    broken = root / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"name": "broken"}))
    return root


def test_models_page_shows_cards_metrics_and_problems(models, monkeypatch):
    monkeypatch.setenv("DR_MODELS_DIR", str(models))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.warning[0].value == RESEARCH_USE_NOTICE
    text = all_text(at)
    assert DEMO_NOTICE in text
    assert [s.value for s in at.subheader][:2] == ["evaluated 0.1 - Baseline CNN",
                                                   "plain 0.1 - Baseline CNN"]
    assert len(at.get("plotly_chart")) == 3  # confusion matrix, reliability, training curves
    held_out = at.table[1].value  # table 0: the bundle's facts
    assert list(held_out["dataset"]) == ["seed 4321"]
    assert list(held_out["quadratic kappa"]) == ["0.735 (0.680-0.780)"]
    assert "Held-out evaluation" in text
    metrics = at.table[2].value
    assert "referable DR: sensitivity" in list(metrics["metric"])
    assert not any(m.startswith("held_out") for m in metrics["metric"])
    assert any("Could not load `broken`" in e for e in texts(at, "error"))
    assert "# evaluated (version 0.1)" in text  # MODEL_CARD.md rendered
    assert "No validation metrics recorded" in text  # the plain bundle


def test_empty_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_MODELS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No model bundles" in i for i in texts(at, "info"))


def test_metric_rows_flatten_nested_metrics():
    rows = {r["metric"]: r["value"] for r in metrics_rows(EVALUATION)}
    assert rows["referable DR: sensitivity"] == "0.900"
    assert rows["photos"] == "50"
    assert "confusion_matrix" not in rows and "reliability" not in rows


def test_figures_carry_the_numbers(tmp_path):
    fig = confusion_figure(EVALUATION["confusion_matrix"])
    assert fig.data[0].z[0][0] == pytest.approx(10 / 12)
    rel = reliability_figure(EVALUATION["reliability"])
    assert list(rel.data[1].x) == [0.4]  # the empty bin is left out
    assert read_history(None) == [] and read_history(str(tmp_path)) == []


def test_cross_validation_headline_and_split_names():
    from dashboard.components.model_card import cross_validation_rows, split_of

    ev = dict(EVALUATION, split="calibration", selection=dict(EVALUATION), cross_validation={
        "results": {"lite0, out-of-fold": {
            "n_photos": 395, "referable_auroc": {"value": 0.8, "ci95": [0.74, 0.85]},
            "kappa_quadratic": {"value": 0.3, "ci95": [0.2, 0.4]},
            "sensitivity": {"value": 0.9, "ci95": None}, "specificity": {"value": None}}}})
    (row,) = cross_validation_rows(ev)
    assert row["referable AUROC"] == "0.800 (0.740-0.850)"
    assert row["sensitivity"] == "0.900" and row["specificity"] == "n/a"
    assert "calibration split" in split_of(ev) and split_of(EVALUATION) == "validation split"
    names = {r["metric"] for r in metrics_rows(ev)}
    assert not any(n.startswith(("selection", "cross_validation", "split")) for n in names)


def test_grade_rule_and_cut_points_are_worded_not_raw_keys():
    """Issue 12: the Models page showed a raw `ordinal_thresholds` key."""
    from dashboard.components.model_card import grade_rule

    rows = {r["metric"]: r["value"] for r in metrics_rows(
        {"ordinal_thresholds": [0.5614323500852625, 1.17, 2.8, 2.87]})}
    assert rows == {"grade cut points on the expected grade (ordinal rule)":
                    "0.561, 1.170, 2.800, 2.870"}
    assert grade_rule(None).endswith("the most probable grade they allow")
    assert "cut points 0.561, 1.170, 2.800, 2.870" in grade_rule([0.5614323500852625, 1.17,
                                                                   2.8, 2.87])


def test_the_default_grader_comes_first_and_its_table_says_how_it_was_measured(tmp_path,
                                                                               monkeypatch):
    """Seen in the browser: the default (multisource-lite0) sat below every demo bundle, in
    name order. The page now lists bundles as the Grade page offers them, default first, and
    the held-out table's heading says how that table was measured."""
    measured = {"kappa_quadratic": 0.5, "referable": {"auroc": 0.86}}
    what = "a held-out split of each source; quality gate off"
    make_tiny_bundle(tmp_path, "a-demo", evaluation=EVALUATION)
    make_tiny_bundle(tmp_path, "z-default", demo=False,
                     evaluation=measured | {"held_out": {"what": what, "results": {}}})
    monkeypatch.setenv("DR_MODELS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.subheader][:2] == ["z-default 0.1 - Baseline CNN",
                                                   "a-demo 0.1 - Baseline CNN"]
    at_held = make_tiny_bundle(tmp_path / "other", "h", demo=False,
                               evaluation=measured | HELD_OUT)
    monkeypatch.setenv("DR_MODELS_DIR", str(at_held.path.parent))
    text = all_text(AppTest.from_file(PAGE, default_timeout=TIMEOUT).run())
    assert "**Held-out evaluation** (photos used for nothing else)" in text
