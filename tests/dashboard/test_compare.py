"""Compare-tiers page through AppTest: one row per grader, disagreement flag, parameters."""

from __future__ import annotations

import pytest

from core.grading import DME_NOT_ASSESSED, NOT_FUNDUS_HEADLINE
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE, heatmap_off_field
from dashboard.components.compare_table import DISAGREE, TOO_FEW
from tests.dashboard.pages_support import (
    VIEWS,
    all_text,
    fundus_png,
    grey_png,
    start_page,
    texts,
)

PAGE = str(VIEWS / "compare.py")


@pytest.fixture
def app(models, tmp_path, monkeypatch):
    return start_page(PAGE, models, tmp_path, monkeypatch)


def _table(at):
    return at.dataframe[0].value


def test_every_grader_gets_a_row(app):
    assert app.warning[0].value == RESEARCH_USE_NOTICE
    assert any(DEMO_NOTICE in e for e in texts(app, "error"))
    app.file_uploader(key="compare-upload").set_value(("eye.png", fundus_png(1), "image/png"))
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    table = _table(app)
    assert sorted(table["bundle"]) == ["tiny-cnn 0.1", "tiny-lora 0.1", "tiny-vit 0.1"]
    assert set(table["tier"]) == {"Baseline CNN", "RETFound", "RETFound + LoRA"}
    assert list(table.loc[table["bundle"] == "tiny-cnn 0.1", "demo"]) == ["DEMO"]
    assert (table["latency_ms"] > 0).all() and (table["parameters"] > 1000).all()
    assert table["p_referable"].between(0, 1).all()
    # no tiny bundle has a DME output (issue 33): "not assessed", in the table and each card
    assert set(table["DME"]) == {"not assessed"}
    assert sum(DME_NOT_ASSESSED in m for m in texts(app, "markdown")) == 3
    assert len(app.get("plotly_chart")) == 3
    assert len(app.get("image")) == 4  # the un-annotated photo + one heatmap per bundle
    # the row of the un-annotated photo says what it is and its quality (it was blank)
    assert "cropped to the field of view, as every model sees it" in all_text(app)
    assert any(m.startswith("Quality: ") for m in texts(app, "markdown"))
    # the tiny bundles are demo models or have no validation metrics: none of them gets a vote
    assert set(table["counted for agreement"]) == {
        "no - demo model", "no - no validation metrics"}
    assert DISAGREE not in all_text(app)
    assert "models agree on the referable decision" not in all_text(app)
    assert TOO_FEW in all_text(app)
    assert not app.success


def test_each_border_drawn_heatmap_is_called_that(app, monkeypatch):
    import dashboard.components.heatmap as heatmap

    monkeypatch.setattr(heatmap, "share_outside_field", lambda *_: 0.85)
    app.file_uploader(key="compare-upload").set_value(("eye.png", fundus_png(1), "image/png"))
    app.run()
    assert texts(app, "warning").count(heatmap_off_field(0.85)) == 3  # one per grader's map


def test_disagreement_rule():
    from types import SimpleNamespace

    from dashboard.components.compare_table import referable_agreement, referable_disagreement

    good = {"referable": {"auroc": 0.95}, "kappa_quadratic": 0.8}
    chance = {"referable": {"auroc": 0.607}, "kappa_quadratic": 0.04}

    def a(ref, gradable=True, evaluation=good, demo=False):
        pred = SimpleNamespace(referable=ref, gradable=gradable)
        bundle = SimpleNamespace(manifest=SimpleNamespace(demo=demo, evaluation=evaluation))
        return SimpleNamespace(ok=True, prediction=pred, bundle=bundle)

    assert referable_disagreement([a(True), a(False)])
    assert not referable_disagreement([a(True), a(True)])
    assert not referable_disagreement([a(True), a(None, gradable=False)])  # ungradable: no vote
    assert not referable_disagreement([])
    assert referable_agreement([a(True), a(True)]) == "referable"
    assert referable_agreement([a(False), a(False)]) == "not referable"
    assert referable_agreement([a(True), a(False)]) is None
    assert referable_agreement([a(True), a(None, gradable=False)]) is None  # not all graded
    # issue 12: near-chance and demo tiers never count, and one counted tier is not agreement
    assert referable_agreement([a(True), a(True, evaluation=chance), a(True, demo=True)]) is None
    assert referable_agreement([a(True), a(True), a(False, evaluation=chance)]) == "referable"
    assert not referable_disagreement([a(True), a(False, evaluation=chance)])
    assert not referable_disagreement([a(True), a(False, demo=True)])


def test_ungradable_photo_is_reported_per_bundle(app):
    app.file_uploader(key="compare-upload").set_value(("grey.png", grey_png(), "image/png"))
    app.run()
    assert not app.exception
    table = _table(app)
    assert set(table["result"]) == {NOT_FUNDUS_HEADLINE}  # a grey frame: a wrong upload
    assert DISAGREE not in all_text(app)


def test_corrupt_file_is_an_error_row_not_a_crash(app):
    app.file_uploader(key="compare-upload").set_value(("bad.png", b"garbage", "image/png"))
    app.run()
    assert not app.exception
    assert all(r.startswith("error:") for r in _table(app)["result"])


GOOD = {"referable": {"auroc": 0.95}, "kappa_quadratic": 0.8}
CHANCE = {"referable": {"auroc": 0.607}, "kappa_quadratic": 0.04}


def _tiers(root, spec):
    """Tiny non-demo CNN bundles: (name, evaluation, referable threshold) each."""
    from core.manifest import CalibrationSpec
    from tests.helpers import make_tiny_bundle

    for i, (name, evaluation, t_ref) in enumerate(spec):
        make_tiny_bundle(root, name, seed=i, demo=False, evaluation=evaluation,
                         calibration=CalibrationSpec(referable_threshold=t_ref,
                                                     vision_threatening_threshold=1.0))
    return root


def _compare(root, tmp_path, monkeypatch):
    at = start_page(PAGE, root, tmp_path, monkeypatch)
    at.file_uploader(key="compare-upload").set_value(("eye.png", fundus_png(1), "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_near_chance_tiers_never_make_a_green_agreement(tmp_path, monkeypatch):
    """Issue 12: one validated tier and two near-chance ones whose 'referable' turns on a coin
    flip: the page must not print a green 'the models agree'."""
    root = _tiers(tmp_path / "models", [("valid", GOOD, 0.0), ("coin-a", CHANCE, 0.0),
                                        ("coin-b", CHANCE, 0.0)])
    at = _compare(root, tmp_path, monkeypatch)
    assert not at.success  # all three say "referable", but only one of them has a vote
    assert TOO_FEW in all_text(at)
    table = _table(at)
    counted = dict(zip(table["bundle"], table["counted for agreement"], strict=True))
    assert counted["valid 0.1"] == "yes"
    assert counted["coin-a 0.1"] == ("no - near chance on its validation data "
                                     "(AUROC 0.61 < 0.70, kappa 0.04 < 0.20)")
    assert "not counted for agreement: near chance" in all_text(at)
    # the near-chance results themselves are flagged for review
    review = dict(zip(table["bundle"], table["needs review"], strict=True))
    assert "model near chance on its own validation data" in review["coin-b 0.1"]


def test_two_validated_tiers_that_agree_get_the_green_box(tmp_path, monkeypatch):
    root = _tiers(tmp_path / "models", [("valid-a", GOOD, 0.0), ("valid-b", GOOD, 0.0),
                                        ("coin", CHANCE, 1.01)])
    at = _compare(root, tmp_path, monkeypatch)
    assert [s.value for s in at.success] == [
        "The 2 validated models agree on the referable decision: referable."]
    assert DISAGREE not in all_text(at)  # the near-chance "not referable" is not a dissent
