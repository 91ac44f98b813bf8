"""Compare-tiers page through AppTest: one row per grader, disagreement flag, parameters."""

from __future__ import annotations

import pytest

from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from dashboard.components.compare_table import DISAGREE
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
    assert len(app.get("plotly_chart")) == 3
    assert len(app.get("image")) == 4  # the un-annotated photo + one heatmap per bundle
    refs = set(table["referable"])
    assert (DISAGREE in all_text(app)) == (len(refs) > 1)
    assert ("models agree on the referable decision" in all_text(app)) == (len(refs) == 1)


def test_disagreement_rule():
    from types import SimpleNamespace

    from dashboard.components.compare_table import referable_agreement, referable_disagreement

    def a(ref, gradable=True):
        pred = SimpleNamespace(referable=ref, gradable=gradable)
        return SimpleNamespace(ok=True, prediction=pred)

    assert referable_disagreement([a(True), a(False)])
    assert not referable_disagreement([a(True), a(True)])
    assert not referable_disagreement([a(True), a(None, gradable=False)])  # ungradable: no vote
    assert not referable_disagreement([])
    assert referable_agreement([a(True), a(True)]) == "referable"
    assert referable_agreement([a(False), a(False)]) == "not referable"
    assert referable_agreement([a(True), a(False)]) is None
    assert referable_agreement([a(True), a(None, gradable=False)]) is None  # not all graded


def test_ungradable_photo_is_reported_per_bundle(app):
    app.file_uploader(key="compare-upload").set_value(("grey.png", grey_png(), "image/png"))
    app.run()
    assert not app.exception
    table = _table(app)
    assert set(table["result"]) == {"Ungradable - re-image or refer"}
    assert DISAGREE not in all_text(app)


def test_corrupt_file_is_an_error_row_not_a_crash(app):
    app.file_uploader(key="compare-upload").set_value(("bad.png", b"garbage", "image/png"))
    app.run()
    assert not app.exception
    assert all(r.startswith("error:") for r in _table(app)["result"])
