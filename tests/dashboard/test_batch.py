"""Batch screening page through AppTest: uploads, folders under a root, exports, reopen, resume,
sign-off. Tiny random bundles: the tests assert structure and behaviour, never accuracy."""

from __future__ import annotations

import io
import threading

import pandas as pd
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.bundle import load_bundle
from core.screening import screen
from core.store import Store
from core.synthetic import Nuisance, generate_fundus
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from dashboard.components.batch_source import FOLDER, ZIP
from tests.dashboard.pages_support import REPO, TIMEOUT, VIEWS, all_text, build_models, texts, use_env

PAGE = str(VIEWS / "batch.py")
BROKEN = ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")


def jpeg(grade: int, seed: int) -> bytes:
    """A synthetic fundus the quality gate accepts even at the tiny bundles' decode size."""
    buf = io.BytesIO()
    Image.fromarray(generate_fundus(grade, seed, size=512, nuisance=Nuisance()).image).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


PHOTOS = [(f"{10 + i}_{'left' if i % 2 else 'right'}.jpg", jpeg(i % 5, i), "image/jpeg")
          for i in range(3)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), vit=False)


@pytest.fixture
def env(models, tmp_path, monkeypatch):
    """Models, a tmp DB and a tmp screening root with a clinic folder of two photos."""
    db = use_env(monkeypatch, models, tmp_path)
    root = tmp_path / "root"
    clinic = root / "clinic"
    clinic.mkdir(parents=True)
    for name, data, _ in PHOTOS[:2]:
        (clinic / name).write_bytes(data)
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("DR_SCREEN_ROOTS", str(root))
    return {"db": db, "root": root, "clinic": clinic, "models": models}


def _app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _upload_and_screen(at: AppTest, files) -> AppTest:
    at.file_uploader(key="batch-source-photos").set_value(list(files))
    _run(at)
    at.button(key="batch-start").click()
    return _run(at)


def _photos_table(at: AppTest) -> pd.DataFrame:
    return next(d for d in at.dataframe if (d.key or "").startswith("batch-photos")).value


def test_page_leads_with_notice_and_explains_missing_roots(env, monkeypatch):
    monkeypatch.delenv("DR_SCREEN_ROOTS")
    at = _app()
    assert at.warning[0].value == RESEARCH_USE_NOTICE
    assert at.title[0].value == "Batch screening"
    assert any(DEMO_NOTICE in e for e in texts(at, "error"))  # tiny-cnn is a demo bundle
    at.radio(key="batch-source-kind").set_value(FOLDER)
    _run(at)
    assert any("screening_roots" in i and "DR_SCREEN_ROOTS" in i for i in texts(at, "info"))
    assert at.button(key="batch-start").disabled


def test_uploads_give_one_row_per_photo_and_a_corrupt_file_is_one_error_row(env):
    at = _upload_and_screen(_app(), [*PHOTOS, BROKEN])
    df = _photos_table(at)
    assert sorted(df["file"]) == sorted([p[0] for p in PHOTOS] + ["broken.jpg"])
    broken = df[df["file"] == "broken.jpg"].iloc[0]
    assert "broken.jpg" in broken["problem"] and broken["grade"] == "-"
    graded = df[df["file"] != "broken.jpg"]
    assert (graded["problem"] == "").all()
    assert graded["grade"].str.match(r"^\d - ").all(), graded["grade"].tolist()
    assert graded["photo"].str.startswith("data:image/jpeg;base64,").all()  # thumbnails
    urgency_rank = {"Vision-threatening DR": 4, "Referable DR": 3,
                    "Ungradable - re-image or refer": 2, "Mild NPDR (not referable)": 1,
                    "No DR": 0}
    ranks = [urgency_rank[u] for u in df["urgency"]]
    assert ranks == sorted(ranks, reverse=True)  # most urgent first
    run = Store(env["db"]).list_runs()[0]
    assert (run.status, run.n_files, run.n_errors) == ("done", 4, 1)
    assert any(DEMO_NOTICE in e for e in texts(at, "error"))  # the run used a demo model
    patients = next(t.value for t in at.table if "follow-up guidance" in t.value.columns)
    assert set(patients["patient"]) == {"10", "11", "12", "broken"}


def test_filters_narrow_the_photo_table(env):
    at = _upload_and_screen(_app(), [*PHOTOS, BROKEN])
    at.checkbox(key="batch-filter-errors").check()
    assert list(_photos_table(_run(at))["file"]) == ["broken.jpg"]
    at.checkbox(key="batch-filter-errors").uncheck()
    at.multiselect(key="batch-filter-urgency").set_value([])
    assert len(_photos_table(_run(at))) == 0


def test_folder_inside_root_is_screened_and_dotdot_is_refused(env):
    at = _app()
    at.radio(key="batch-source-kind").set_value(FOLDER)
    _run(at)
    at.selectbox(key="batch-source-folder").set_value("clinic")
    _run(at)
    at.button(key="batch-start").click()
    _run(at)
    df = _photos_table(at)
    assert sorted(df["file"]) == sorted(p[0] for p in PHOTOS[:2])
    assert Store(env["db"]).list_runs()[0].source == str(env["clinic"].resolve())

    at.text_input(key="batch-source-path").set_value("../outside")
    _run(at)
    assert any("contains '..'" in e for e in texts(at, "error")), texts(at, "error")
    assert at.button(key="batch-start").disabled


def test_symlink_leading_out_of_the_root_is_refused(env, tmp_path):
    link = env["root"] / "sneaky"
    link.symlink_to(tmp_path / "outside", target_is_directory=True)
    at = _app()
    at.radio(key="batch-source-kind").set_value(FOLDER)
    _run(at)
    at.text_input(key="batch-source-path").set_value("sneaky")
    _run(at)
    assert any("outside the allowed screening folders" in e for e in texts(at, "error"))
    assert at.button(key="batch-start").disabled


def test_roots_from_secrets_file(env, monkeypatch):
    monkeypatch.delenv("DR_SCREEN_ROOTS")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.secrets["screening_roots"] = [str(env["root"])]
    _run(at)
    at.radio(key="batch-source-kind").set_value(FOLDER)
    _run(at)
    assert "clinic" in at.selectbox(key="batch-source-folder").options


def test_csv_downloads_parse_and_carry_the_wording(env, monkeypatch):
    captured = {}
    original = st.download_button

    def spy(label, data, *args, **kwargs):
        captured[label] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", spy)
    _upload_and_screen(_app(), [*PHOTOS, BROKEN])
    photos = captured["CSV per photo"]()
    text = photos.decode("utf-8")
    assert text.startswith(f"# {RESEARCH_USE_NOTICE}")
    assert DEMO_NOTICE in text
    df = pd.read_csv(io.StringIO(text), comment="#")
    assert sorted(df["file"]) == sorted([p[0] for p in PHOTOS] + ["broken.jpg"])
    assert df["model"].dropna().eq("tiny-cnn").all()
    patients = pd.read_csv(io.BytesIO(captured["CSV per patient"]()), comment="#")
    assert len(patients) == 4 and "follow_up" in patients.columns
    pdf = captured["PDF report (run)"]()
    assert pdf.startswith(b"%PDF")
    run_id = Store(env["db"]).list_runs()[0].id
    events = [e.event for e in Store(env["db"]).audit_log(run_id=run_id)]
    assert events.count("export_csv") == 2  # built on click only: page views are not exports


def test_earlier_run_can_be_reopened(env):
    store = Store(env["db"])
    bundle = load_bundle(env["models"] / "tiny-cnn")
    first = screen(env["clinic"], [bundle], store, workers=0)
    second = screen([(n, d) for n, d, _ in PHOTOS], [bundle], store, workers=0)
    at = _app()
    labels = at.selectbox(key="batch-run").options
    assert len(labels) == 2 and labels[0].startswith(f"Run {second} ")
    assert "done" in labels[1] and "2 files" in labels[1]
    at.selectbox(key="batch-run").set_value(first)
    _run(at)
    assert f"Worklist - run {first}" in all_text(at)
    assert sorted(_photos_table(at)["file"]) == sorted(p[0] for p in PHOTOS[:2])


def test_interrupted_folder_run_is_resumed(env):
    store = Store(env["db"])
    bundle = load_bundle(env["models"] / "tiny-cnn")
    stop = threading.Event()
    stop.set()
    run_id = screen(env["clinic"], [bundle], store, workers=0, batch_size=1, stop_event=stop)
    assert store.run(run_id).status == "interrupted" and store.run(run_id).n_files == 1
    at = _app()
    assert "interrupted" in all_text(at)
    at.button(key="batch-resume").click()
    _run(at)
    info = store.run(run_id)
    assert (info.status, info.n_files) == ("done", 2)
    assert len(_photos_table(at)) == 2


def test_upload_run_resume_asks_for_the_same_uploads(env):
    store = Store(env["db"])
    bundle = load_bundle(env["models"] / "tiny-cnn")
    stop = threading.Event()
    stop.set()
    uploads = [(n, d) for n, d, _ in PHOTOS]
    run_id = screen(uploads, [bundle], store, workers=0, batch_size=1, stop_event=stop)
    at = _app()
    assert "upload the same photos" in all_text(at)
    assert at.button(key="batch-resume").disabled
    at.file_uploader(key="batch-source-photos").set_value(list(PHOTOS))
    _run(at)
    at.button(key="batch-resume").click()
    _run(at)
    assert store.run(run_id).status == "done" and store.run(run_id).n_files == 3


def test_stopped_run_is_opened_with_a_note(env):
    store = Store(env["db"])
    bundle = load_bundle(env["models"] / "tiny-cnn")
    stop = threading.Event()
    stop.set()
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["batch-active"] = 0  # what a stopped run leaves behind
    run_id = screen(env["clinic"], [bundle], store, workers=0, batch_size=1, stop_event=stop)
    _run(at)
    assert any(f"Run {run_id} keeps every photo" in i for i in texts(at, "info"))
    assert f"Worklist - run {run_id}" in all_text(at)


def test_zip_upload_is_screened(env):
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, _ in PHOTOS:
            zf.writestr(f"day1/{name}", data)
    at = _app()
    at.radio(key="batch-source-kind").set_value(ZIP)
    _run(at)
    at.file_uploader(key="batch-source-zip").set_value([("day1.zip", buf.getvalue(),
                                                         "application/zip")])
    _run(at)
    at.button(key="batch-start").click()
    _run(at)
    assert sorted(_photos_table(at)["file"]) == sorted(f"day1/{p[0]}" for p in PHOTOS)


def test_bad_pattern_is_explained(env):
    at = _app()
    at.text_input(key="batch-pattern").set_value("(?P<patient>\\d+)")
    _run(at)
    assert any("named groups" in e for e in texts(at, "error"))
    assert at.button(key="batch-start").disabled


def test_row_click_shows_photo_heatmap_and_signoff_stored_with_run_id(env):
    at = _upload_and_screen(_app(), PHOTOS)
    df = _photos_table(at)
    row = next(i for i, g in enumerate(df["grade"]) if g[0].isdigit())
    name = df["file"].iloc[row]
    key = next(d.key for d in at.dataframe if (d.key or "").startswith("batch-photos"))
    at.session_state[key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    _run(at)
    assert any(s.value == name for s in at.subheader), [s.value for s in at.subheader]
    assert len(at.get("image")) == 2  # the photo and its heatmap overlay
    assert "Suggested grade" in all_text(at)
    suffix = next(t.key for t in at.text_input if t.key.startswith("clinician-"))[10:]
    at.radio(key=f"decision-{suffix}").set_value("override")
    at.selectbox(key=f"final-{suffix}").set_value("4 - PDR")
    at.text_input(key=f"reason-{suffix}").set_value("NVD on review")
    at.text_input(key=f"clinician-{suffix}").set_value("Nurse Test")
    next(b for b in at.button if b.label == "Sign off").click()
    _run(at)
    assert any("Sign-off stored" in s for s in texts(at, "success")), all_text(at)
    store = Store(env["db"])
    run_id = store.list_runs()[0].id
    rows = store.signoffs(run_id=run_id)
    assert len(rows) == 1
    assert (rows[0].image_name, rows[0].final_grade, rows[0].clinician) == (name, 4, "Nurse Test")


def test_router_lists_batch_page(env):
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("views/batch.py")
    _run(at)
    assert at.title[0].value == "Batch screening"
