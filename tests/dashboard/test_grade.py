"""Grade page through AppTest: result card, bad files, ungradable photos, sign-off, reruns."""

from __future__ import annotations

import pytest

from core.grading import DME_NOT_ASSESSED, NOT_FUNDUS_HEADLINE, PROGRAMMES, Urgency
from core.wording import DEMO_NOTICE, HEATMAP_CAPTION, RESEARCH_USE_NOTICE, heatmap_off_field
from tests.dashboard.pages_support import (
    REPO,
    VIEWS,
    all_text,
    fundus_png,
    grey_png,
    noise_png,
    start_page,
    texts,
)

PAGE = str(VIEWS / "grade.py")


@pytest.fixture
def app(models, tmp_path, monkeypatch):
    return start_page(PAGE, models, tmp_path, monkeypatch)


def _upload(at, *files):
    at.file_uploader(key="grade-upload").set_value(list(files))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_empty_page_leads_with_notice_and_offers_only_graders(app):
    assert app.warning[0].value == RESEARCH_USE_NOTICE
    labels = app.selectbox(key="grade-bundle").options  # formatted labels
    assert any(label.startswith("DEMO - tiny-cnn") for label in labels)
    assert not any("tiny-encoder" in label for label in labels)  # encoder-only: cannot grade
    assert len(labels) == 3
    assert any(DEMO_NOTICE in e for e in texts(app, "error"))  # default bundle is the demo one


def test_synthetic_sample_gives_a_result_card(app):
    sample = app.selectbox(key="grade-sample")
    sample.set_value(sample.options[3]).run()  # grade 2 sample
    assert not app.exception
    text = all_text(app)
    assert "Synthetic sample" in text
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Gradable"] == "YES"
    assert metrics["Referable DR"] in ("YES", "no")
    assert "Suggested grade:" in text and DME_NOT_ASSESSED in text
    assert "Guideline:" in text and HEATMAP_CAPTION in text
    assert "Model **tiny-cnn** version **0.1**" in text
    assert len(app.get("image")) == 3  # photo, what the model saw, heatmap overlay
    assert len(app.get("plotly_chart")) == 1
    assert app.slider(key=next(s.key for s in app.slider if s.key.startswith("opacity")))


def test_corrupt_file_shows_message_and_next_upload_grades(app):
    _upload(app, ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"))
    errors = texts(app, "error")
    assert any("broken.jpg" in e for e in errors), errors
    assert not app.exception
    _upload(app, ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"),
            ("eye.png", fundus_png(1), "image/png"))
    metrics = [(m.label, m.value) for m in app.metric]
    assert ("Gradable", "YES") in metrics
    assert any("broken.jpg" in e for e in texts(app, "error"))  # the bad one still explained
    assert "Could not read the file" in set(app.dataframe[0].value["result"])  # lists both


@pytest.mark.parametrize("name,data", [("grey.png", grey_png()), ("noise.png", noise_png())])
def test_non_fundus_picture_is_called_that_never_graded(app, name, data):
    _upload(app, (name, data, "image/png"))
    text = all_text(app)
    assert NOT_FUNDUS_HEADLINE in texts(app, "error")[-1]
    assert Urgency.UNGRADABLE.label not in text  # not "an ungradable fundus": a wrong upload
    assert "Suggested grade" not in text and "Gradable" not in {m.label for m in app.metric}
    assert len(app.get("plotly_chart")) == 0  # no probabilities
    assert not any(r.key and r.key.startswith("decision-") for r in app.radio)  # no "accept"


def test_non_fundus_signoff_records_a_wrong_upload(app, tmp_path):
    from core.images import image_fingerprint
    from core.store import Store
    from dashboard.components.wrong_upload import WRONG_UPLOAD_REASON

    _upload(app, ("selfie.png", noise_png(seed=3), "image/png"))
    key = next(t.key for t in app.text_input if t.key.startswith("wrong-clinician-"))
    app.text_input(key=key).set_value("Dr Test")
    app.button[0].click().run()
    assert not app.exception
    assert any("Recorded" in s for s in texts(app, "success")), all_text(app)
    rows = Store(tmp_path / "signoffs.db").signoffs(image_hash=image_fingerprint(
        noise_png(seed=3)))
    assert [(r.decision, r.predicted_grade, r.final_grade, r.reason) for r in rows] == [
        ("override", None, None, WRONG_UPLOAD_REASON)]


def test_an_ungradable_fundus_is_not_called_a_wrong_upload(app):
    from dashboard.components.upload import DEGRADED

    app.selectbox(key="grade-sample").set_value(DEGRADED).run()
    assert Urgency.UNGRADABLE.label in all_text(app)
    assert NOT_FUNDUS_HEADLINE not in all_text(app)


def test_same_file_uploaded_twice_is_shown_once(app):
    """Issue 12: a file already in the list crashed the page (StreamlitDuplicateElementId)."""
    _upload(app, ("eye.png", fundus_png(1), "image/png"), ("eye.png", fundus_png(1), "image/png"),
            ("copy.png", fundus_png(1), "image/png"))
    assert [h.value for h in app.subheader] == ["eye.png"]
    assert "Already in the list, shown once: eye.png, copy.png." in all_text(app)
    assert len(app.get("plotly_chart")) == 1


def test_heatmap_explains_the_displayed_grade(app):
    _upload(app, ("eye.png", fundus_png(6), "image/png"))
    grade = next(int(m.value.split("(ICDR ")[1][0]) for m in app.markdown
                 if "Suggested grade:" in m.value)
    target = next(s for s in app.selectbox if s.key.startswith("target-"))
    assert target.value == grade
    caption = next(im.caption for i in app.get("image") for im in i.proto.imgs
                   if "Heatmap" in im.caption)
    assert f"explains the displayed grade {grade}" in caption


@pytest.mark.parametrize("share, warned", [(0.9, True), (0.3, False)])
def test_a_heatmap_drawn_to_the_border_is_called_that(app, monkeypatch, share, warned):
    import dashboard.components.heatmap as heatmap

    monkeypatch.setattr(heatmap, "share_outside_field", lambda *_: share)
    _upload(app, ("eye.png", fundus_png(6), "image/png"))
    said = [w for w in texts(app, "warning") if "not the retina" in w]
    assert said == ([heatmap_off_field(share)] if warned else [])


def test_programme_switch_shows_uk_mapping_caveat(app):
    _upload(app, ("eye.png", fundus_png(2), "image/png"))
    app.radio(key="grade-programme").set_value(PROGRAMMES[1]).run()
    assert "ICDR-to-NHS mapping is approximate" in all_text(app)


def test_slider_move_does_not_recompute(app, monkeypatch):
    from core.explain import Explanation  # noqa: F401 - imported for clarity of what is counted
    from core.predict import Predictor

    calls = {"predict": 0, "explain": 0}
    orig_predict, orig_explain = Predictor.predict_prepared, Predictor.explain

    def predict(self, *a, **k):
        calls["predict"] += 1
        return orig_predict(self, *a, **k)

    def explain(self, *a, **k):
        calls["explain"] += 1
        return orig_explain(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict_prepared", predict)
    monkeypatch.setattr(Predictor, "explain", explain)
    _upload(app, ("eye.png", fundus_png(3), "image/png"))
    assert calls == {"predict": 1, "explain": 1}
    slider = next(s for s in app.slider if s.key.startswith("opacity"))
    slider.set_value(0.8).run()
    app.radio(key="grade-programme").set_value(PROGRAMMES[1]).run()
    assert not app.exception
    assert calls == {"predict": 1, "explain": 1}


def test_signoff_is_stored_and_read_back(app, tmp_path):
    store = pytest.importorskip("core.store")
    _upload(app, ("eye.png", fundus_png(4), "image/png"))
    key = next(t.key for t in app.text_input if t.key.startswith("clinician-"))
    suffix = key[len("clinician-"):]
    app.radio(key=f"decision-{suffix}").set_value("override")
    app.selectbox(key=f"final-{suffix}").set_value("3 - Severe NPDR")
    app.text_input(key=f"reason-{suffix}").set_value("IRMA in two quadrants")
    app.text_input(key=key).set_value("Dr Test")
    app.button[0].click().run()
    assert not app.exception
    assert any("Sign-off stored" in s for s in texts(app, "success")), all_text(app)
    from core.images import image_fingerprint

    rows = store.Store(tmp_path / "signoffs.db").signoffs(image_hash=image_fingerprint(
        fundus_png(4)))
    assert len(rows) == 1
    row = rows[0]
    assert (row.decision, row.final_grade, row.clinician) == ("override", 3, "Dr Test")
    assert row.reason == "IRMA in two quadrants" and row.model == "tiny-cnn"
    assert "Earlier sign-offs for this photo (1)" in all_text(app)


def test_signoff_override_without_reason_is_refused(app):
    _upload(app, ("eye.png", fundus_png(5), "image/png"))
    key = next(t.key for t in app.text_input if t.key.startswith("clinician-"))
    suffix = key[len("clinician-"):]
    app.radio(key=f"decision-{suffix}").set_value("override")
    app.text_input(key=key).set_value("Dr Test")
    app.button[0].click().run()
    assert any("needs a reason" in e for e in texts(app, "error"))
    assert not any("Sign-off stored" in s for s in texts(app, "success"))


def test_router_opens_grade_by_default(models, tmp_path, monkeypatch):
    at = start_page(str(REPO / "dashboard" / "app.py"), models, tmp_path, monkeypatch)
    assert at.title[0].value == "Grade a fundus photo"
    assert at.warning[0].value == RESEARCH_USE_NOTICE


def test_degraded_synthetic_sample_is_ungradable(app):
    from dashboard.components.upload import DEGRADED

    app.selectbox(key="grade-sample").set_value(DEGRADED).run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}["Gradable"] == "NO"
    assert "out of focus" in all_text(app)


def test_real_photos_graded_and_non_fundus_never_graded(app, fundus_samples_dir):
    """Real photos (research use, read from ../shared, never copied): a good EyePACS photo and a
    DRIVE TIFF get a grade; the natural photo and the GUI screenshot are called ungradable."""
    files = {name: (fundus_samples_dir / name).read_bytes() for name in (
        "687_right.jpeg", "22_training.tif", "800px-Eye_disease_simulation__normal_vision.jpg",
        "LoadedImage.png")}
    _upload(app, *[(name, data, "application/octet-stream") for name, data in files.items()])
    summary = app.dataframe[0].value
    results = dict(zip(summary["photo"], summary["result"], strict=True))
    not_graded = {Urgency.UNGRADABLE.label, NOT_FUNDUS_HEADLINE}
    assert results["800px-Eye_disease_simulation__normal_vision.jpg"] in not_graded
    assert results["LoadedImage.png"] in not_graded
    assert results["687_right.jpeg"] != Urgency.UNGRADABLE.label
    assert results["22_training.tif"] != Urgency.UNGRADABLE.label


def test_an_added_photo_comes_first(app):
    """Adding a photo to the session puts its card (and summary row) above the earlier ones."""
    _upload(app, ("first.png", fundus_png(1), "image/png"))
    _upload(app, ("first.png", fundus_png(1), "image/png"), ("second.png", fundus_png(2), "image/png"))
    assert [h.value for h in app.subheader][:2] == ["second.png", "first.png"]
    assert list(app.dataframe[0].value["photo"]) == ["second.png", "first.png"]
