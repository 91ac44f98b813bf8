"""CSV and PDF exports: parse back, carry the wording, name the patients."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from core.report import latin1, pdf_report, worklist_csv
from core.store import FileRow, ResultRow, Store
from core.wording import DEMO_NOTICE, HEATMAP_CAPTION, RESEARCH_USE_NOTICE

pypdf = pytest.importorskip("pypdf")

KEY = "demo@1#abc"


def _result(f: FileRow, grade: int | None, p: float | None, urgency: int) -> ResultRow:
    return ResultRow(f.run_id, f.file, f.content_hash, f.patient, f.eye, f.field_index, "demo",
                     "1.0", KEY, grade, None if grade is None else (0.2,) * 5, p, None,
                     None if grade is None else grade >= 2, None if grade is None else grade >= 3,
                     None if grade is None else 0.9, "good" if grade is not None else "reject",
                     () if grade is not None else ("too dark",), urgency)


@pytest.fixture
def run(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    settings = {"models": {KEY: {"name": "demo", "version": "1.0", "demo": True,
                                 "referable_threshold": 0.4,
                                 "vision_threatening_threshold": 0.5}}}
    run_id = store.create_run("clinic", [KEY], settings)
    files = [FileRow(run_id, "P\u00e9rez_OD_1.jpg", "h1", "P\u00e9rez", "right", 1),
             FileRow(run_id, "P\u00e9rez_OS_1.jpg", "h2", "P\u00e9rez", "left", 1),
             FileRow(run_id, "=cmd_left.jpg", "h3", "=cmd", "left", 1),
             FileRow(run_id, "77_right.jpg", "h4", "77", "right", 1),
             FileRow(run_id, "notes.jpg", "", "notes", "unknown", 1, error="a text file")]
    results = [_result(files[0], 3, 0.9, 4), _result(files[1], 0, 0.1, 0),
               _result(files[2], None, None, 2), _result(files[3], 1, 0.3, 1)]
    store.add_batch(files, results)
    thumbs = {h: cv2.imencode(".jpg", np.full((32, 32, 3), v, np.uint8))[1].tobytes()
              for h, v in (("h1", 120), ("h2", 60))}
    store.put_thumbnails(thumbs)
    store.finish_run(run_id)
    return store, run_id


def test_csv_per_image_parses_and_carries_wording(run, tmp_path):
    store, run_id = run
    path = worklist_csv(store, run_id, tmp_path / "w.csv")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# " + RESEARCH_USE_NOTICE) and DEMO_NOTICE in text
    df = pd.read_csv(path, comment="#", keep_default_na=False)
    assert len(df) == 5
    assert list(df["urgency"][:2]) == ["Vision-threatening DR", "Ungradable - re-image or refer"]
    assert df["file"][0] == "P\u00e9rez_OD_1.jpg" and float(df["referable_threshold"][0]) == 0.4
    assert "'=cmd_left.jpg" in set(df["file"])  # no spreadsheet formula
    assert df.loc[df["file"] == "notes.jpg", "error"].item() == "a text file"
    assert store.audit_log(run_id=run_id)[-1].event == "export_csv"


def test_csv_per_patient(run, tmp_path):
    store, run_id = run
    df = pd.read_csv(worklist_csv(store, run_id, tmp_path / "p.csv", per="patient"),
                     comment="#", keep_default_na=False, dtype=str)
    assert list(df["patient"]) == ["P\u00e9rez", "'=cmd", "notes", "77"]
    perez = df.iloc[0]
    assert (perez["right_eye"], perez["left_eye"]) == ("Vision-threatening DR", "No DR")
    assert perez["follow_up"] == "Guideline: refer immediately."
    assert df.iloc[1]["follow_up"].startswith("Re-image")
    with pytest.raises(ValueError):
        worklist_csv(store, run_id, tmp_path / "x.csv", per="eye")


def _pdf_text(path) -> tuple[int, str]:
    reader = pypdf.PdfReader(str(path))
    return len(reader.pages), " ".join(" ".join(p.extract_text().split()) for p in reader.pages)


def test_run_pdf_has_wording_and_patients(run, tmp_path):
    store, run_id = run
    pages, text = _pdf_text(pdf_report(store, run_id, tmp_path / "r.pdf"))
    assert pages >= 1
    for needle in ("Research use only", "Not a medical device", "Demo model", "P\u00e9rez", "77",
                   "notes", "Vision-threatening DR"):
        assert needle in text, needle
    assert text.count("Research use only") >= pages  # the footer is on every page


def test_patient_pdf_with_thumbnails_and_heatmap(run, tmp_path):
    store, run_id = run
    calls = []

    def heatmap(item):
        calls.append(item.file.file)
        return np.full((48, 48, 3), 40 * len(calls), np.uint8)

    path = pdf_report(store, run_id, tmp_path / "p.pdf", patient="P\u00e9rez", heatmap=heatmap)
    _, text = _pdf_text(path)
    assert "Patient P\u00e9rez" in text and "refer immediately" in text
    assert "Model: demo 1.0" in text and HEATMAP_CAPTION.split(":")[0] in text
    assert sorted(calls) == ["P\u00e9rez_OD_1.jpg", "P\u00e9rez_OS_1.jpg"]
    assert len(pypdf.PdfReader(str(path)).pages[0].images) == 4  # 2 thumbnails + 2 heatmaps
    with pytest.raises(ValueError, match="not in run"):
        pdf_report(store, run_id, tmp_path / "x.pdf", patient="nobody")
    assert [a.event for a in store.audit_log(run_id=run_id)][-1] == "export_pdf"


def test_latin1_sanitises():
    assert latin1("a \u2013 b \u2265 2 \u4e2d") == "a - b >= 2 ?"


def test_pdf_prints_thresholds_rounded(tmp_path):
    """Issue 12: the run PDF printed thresholds to 16 decimals."""
    store = Store(tmp_path / "db.sqlite")
    settings = {"models": {KEY: {"name": "demo", "version": "1.0", "demo": True,
                                 "referable_threshold": 0.3197886509675258,
                                 "vision_threatening_threshold": 0.10841207030126125,
                                 "grade_thresholds": [0.5614323500852625, 1.1755168507880023,
                                                      2.8020905402426566, 2.874801938029009]}}}
    run_id = store.create_run("clinic", [KEY], settings)
    f = FileRow(run_id, "1_left.jpg", "h1", "1", "left", 1)
    store.add_batch([f], [_result(f, 2, 0.5, 3)])
    _, text = _pdf_text(pdf_report(store, run_id, tmp_path / "r.pdf"))
    text = " ".join(text.split())
    assert "referable threshold 0.320, vtDR threshold 0.108" in text
    assert "grade cut points 0.561, 1.176, 2.802, 2.875" in text
    assert "0.31978" not in text and "0.5614323" not in text
