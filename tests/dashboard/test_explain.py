"""Explain page through AppTest: methods per architecture, targets, strength, common scale."""

from __future__ import annotations

import pytest

from core.wording import HEATMAP_CAPTION, RESEARCH_USE_NOTICE
from tests.dashboard.pages_support import (
    VIEWS,
    all_text,
    fundus_png,
    grey_png,
    start_page,
    texts,
)

PAGE = str(VIEWS / "explain.py")


@pytest.fixture
def app(models, tmp_path, monkeypatch):
    return start_page(PAGE, models, tmp_path, monkeypatch)


def _bundle(at, name: str):
    box = at.selectbox(key="explain-bundle")
    box.set_value(next(o for o in box.options if name in o)).run()
    assert not at.exception


def _upload(at, data: bytes, name: str = "eye.png"):
    at.file_uploader(key="explain-upload").set_value((name, data, "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]


def test_methods_follow_the_architecture(app):
    assert app.warning[0].value == RESEARCH_USE_NOTICE
    cnn_methods = app.multiselect(key="explain-methods").options
    assert "attention_rollout" not in cnn_methods and "gradcam" in cnn_methods
    assert "scorecam" in cnn_methods  # tiny model: small enough for ScoreCAM on a CPU
    assert app.multiselect(key="explain-methods").value == ["gradcam"]  # no unchecked second
    _bundle(app, "tiny-vit")
    assert "attention_rollout" in app.multiselect(key="explain-methods").options


def test_several_methods_side_by_side_with_strength(app):
    _upload(app, fundus_png(1))
    app.multiselect(key="explain-methods").set_value(["gradcam", "gradcam++", "eigencam"]).run()
    assert not app.exception
    images = app.get("image")
    assert len(images) == 4  # the un-annotated photo + three maps
    captions = texts(app, "caption")
    layers = [c for c in captions if "layer `backbone.layer4`" in c]
    assert len(layers) == 3 and all("raw peak strength" in c for c in layers)
    assert HEATMAP_CAPTION in all_text(app)
    assert any(c.startswith("eigencam: the same map whatever the target") for c in captions)
    app.checkbox(key="explain-common").check().run()
    assert not app.exception
    rel = [c for c in texts(app, "caption") if "of the strongest" in c]
    assert len(rel) == 3 and any("(100% of the strongest)" in c for c in rel)
    assert len(app.get("progress")) == 3


def test_targets_chosen_grade_and_referable(app):
    _upload(app, fundus_png(2))
    app.multiselect(key="explain-methods").set_value(["gradcam"]).run()
    # by default the map explains the grade on the card (issue 12)
    assert any("gradcam: explains the displayed grade" in c for c in texts(app, "caption"))
    assert not [b for b in app.selectbox if b.key == "explain-grade"]  # no unused grade picker
    app.radio(key="explain-target").set_value("another grade (not the displayed one)").run()
    app.selectbox(key="explain-grade").set_value(4).run()
    assert any("explains grade 4 (PDR) - NOT the displayed grade" in c
               or "explains the displayed grade 4" in c for c in texts(app, "caption"))
    app.radio(key="explain-target").set_value("referable (grades 2-4)").run()
    assert any("gradcam: referable (grades 2-4) (not a single grade)" in c
               for c in texts(app, "caption"))
    assert not app.exception


def test_vit_attention_rollout(app):
    _bundle(app, "tiny-vit")
    _upload(app, fundus_png(3))
    app.multiselect(key="explain-methods").set_value(["attention_rollout", "gradcam"]).run()
    assert not app.exception
    assert not texts(app, "error")[1:], texts(app, "error")
    assert "**attention_rollout**" in texts(app, "markdown")


def test_ungradable_photo_is_not_explained(app):
    _upload(app, grey_png(), "grey.png")
    assert any("ungradable" in w for w in texts(app, "warning"))
    assert len(app.get("image")) == 0
