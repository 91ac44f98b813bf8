"""Issue 33: a photo with macular oedema (DME) and grade 1 is referable everywhere it is shown
(decision, result card, worklist rows, CSV, PDF, Compare row, batch detail), and a bundle
without a DME output says "not assessed" in each of those places, never "no".

The photo runs through a real Predictor (tiny bundle, with or without a DME head) whose scores
are replaced by chosen ones; its result then goes the screener's way into the store and out
through every view of it."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.grading import (
    DME_HEADLINE,
    DME_NOT_ASSESSED,
    DME_SCOPE,
    HEADLINES,
    PROGRAMMES,
    Urgency,
)
from core.predict import Predictor, prepare_image
from core.report import pdf_report, worklist_csv
from core.screening import _row
from core.store import FileRow, Store
from dashboard.components.analysis import Analysis
from dashboard.components.compare_table import compare_row
from dashboard.components.result_card import card_fields
from dashboard.components.worklist import eyes_frame, patients_frame, photos_frame
from tests.helpers import fundus_like, make_tiny_bundle

pypdf = pytest.importorskip("pypdf")

MILD = (0.05, 0.85, 0.05, 0.03, 0.02)  # grade 1: p(referable) 0.10, far below 0.5
P_DME = 0.8  # above the tiny DME bundle's 0.5 threshold
US, UK = PROGRAMMES


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dme-models")
    return {"dme": make_tiny_bundle(folder, "tiny-dme", dme=True, demo=False),
            "plain": make_tiny_bundle(folder, "tiny-plain", demo=False)}


@pytest.fixture(scope="module")
def prepared(bundles):
    return prepare_image(fundus_like(3), bundles["dme"].manifest.preprocessing)


def _predict(predictor: Predictor, prepared, p_dme: float | None):
    scores = (np.array([MILD]), None if p_dme is None else np.array([p_dme]))
    with mock.patch.object(predictor, "scores", lambda batch: scores):
        return predictor.predict_prepared([prepared])[0]


def _screened(tmp_path, predictor: Predictor, preds: dict[str, object]) -> tuple[Store, int]:
    """The screener's way into the store: run settings as core.screening records them."""
    store = Store(tmp_path / "db.sqlite")
    key, m = predictor.bundle.key, predictor.manifest
    settings = {"kind": "upload", "models": {key: {
        **predictor.settings().to_json(), "name": m.name, "version": m.version,
        "demo": m.demo, "tier": m.tier}}}
    run_id = store.create_run("test", [key], settings)
    files = [FileRow(run_id, name, f"h-{name}", "7", eye, 1)
             for name, eye in (("7_right.jpg", "right"), ("7_left.jpg", "left"))]
    store.add_batch(files, [_row(f, preds[f.file], key) for f in files])
    store.finish_run(run_id)
    return store, run_id


def _pdf_text(path) -> str:
    pages = pypdf.PdfReader(str(path)).pages
    return " ".join(" ".join(p.extract_text().split()) for p in pages)


def _csv(store: Store, run_id: int, path, per: str = "image") -> pd.DataFrame:
    return pd.read_csv(worklist_csv(store, run_id, path, per=per), comment="#",
                       keep_default_na=False, dtype=str)


def _detail_app(db: str, run_id: int, file: str) -> AppTest:
    """The batch page's stored-result panel for one photo (dashboard.components.batch_detail)."""
    def script(db: str, run_id: int, file: str) -> None:
        from core.grading import PROGRAMMES
        from core.store import Store
        from dashboard.components.batch_detail import result_ui

        store = Store(db)
        item = next(i for i in store.worklist(run_id).images if i.file.file == file)
        result_ui(store.run(run_id), item, PROGRAMMES[0])

    return AppTest.from_function(script, args=(db, run_id, file), default_timeout=30)


def _card_app(pred) -> AppTest:
    """The Grade page's result card and guidance for one prediction."""
    def script(pred) -> None:
        from core.grading import PROGRAMMES
        from dashboard.components.guidance import guidance_ui
        from dashboard.components.result_card import decision_ui, grade_ui

        decision_ui(pred)
        grade_ui(pred)
        guidance_ui(pred, PROGRAMMES[0])

    return AppTest.from_function(script, args=(pred,), default_timeout=30)


def _all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


def test_dme_with_grade_1_is_referable_everywhere(bundles, prepared, tmp_path):
    predictor = Predictor(bundles["dme"], device="cpu")
    assert predictor.has_dme and predictor.settings().dme_threshold == 0.5
    pred = _predict(predictor, prepared, P_DME)
    fellow = _predict(predictor, prepared, 0.1)  # the other eye: grade 1, no DME
    d = pred.decision

    # the decision
    assert (d.grade, d.dme, d.referable, d.vision_threatening) == (1, True, True, False)
    assert d.urgency == Urgency.REFERABLE and d.headline == DME_HEADLINE
    assert (pred.p_dme, pred.dme) == (P_DME, True)
    assert (fellow.decision.dme, fellow.referable, fellow.urgency) == (False, False, Urgency.MILD)
    statement = "DME: yes - refer (p 0.80, threshold 0.500)"

    # the result card (its text helpers, then the rendered card)
    card = card_fields(pred)
    assert (card["headline"], card["referable"], card["dme"]) == (DME_HEADLINE, "YES", "YES")
    assert card["dme_statement"] == statement and card["urgency"] == Urgency.REFERABLE.label
    at = _card_app(pred).run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Referable DR"] == "YES" and metrics["Macular oedema (DME)"] == "YES"
    text = _all_text(at)
    assert DME_HEADLINE in text and statement in text and "p = 0.80 (threshold 0.500)" in text
    assert "ophthalmologist" in text  # the guidance was given DME
    assert "rescreen" not in text.lower()
    # the YES under "Referable DR" says why, beside a p(grade >= 2) below its threshold
    assert "referable for macular oedema (DME), not for the grade" in text

    # the worklist: photo, eye and patient rows
    store, run_id = _screened(tmp_path, predictor, {"7_right.jpg": pred, "7_left.jpg": fellow})
    wl = store.worklist(run_id)
    photos = photos_frame(wl.images, store, thumbnails=False).set_index("file")
    assert photos.loc["7_right.jpg", "urgency"] == Urgency.REFERABLE.label
    assert photos.loc["7_right.jpg", "DME"] == "YES (p 0.80)"
    assert photos.loc["7_left.jpg", "DME"] == "no (p 0.10)"
    eyes = eyes_frame(wl.eyes).set_index("eye")
    assert eyes.loc["right (OD)", "DME"] == "YES (p 0.80)"
    assert eyes.loc["right (OD)", "urgency"] == Urgency.REFERABLE.label
    (patient,) = wl.patients
    assert (patient.dme, patient.urgency, patient.grade) == (True, Urgency.REFERABLE, 1)
    prow = patients_frame(wl.patients, US).iloc[0]
    assert prow["urgency"] == Urgency.REFERABLE.label and prow["DME"] == "YES (p 0.80)"
    assert "ophthalmologist" in prow["follow-up guidance"]
    uk = patients_frame(wl.patients, UK).iloc[0]["follow-up guidance"]
    assert uk.startswith("R1 M1:")

    # the CSV, per photo and per patient
    csv = _csv(store, run_id, tmp_path / "w.csv").set_index("file")
    right = csv.loc["7_right.jpg"]
    assert (right["referable"], right["dme"], right["urgency"]) == (
        "yes", "yes", Urgency.REFERABLE.label)
    assert float(right["p_dme"]) == pytest.approx(P_DME) and right["dme_threshold"] == "0.500"
    assert right["follow_up"] == d.guidance().action and "ophthalmologist" in right["follow_up"]
    assert csv.loc["7_left.jpg", "dme"] == "no"
    per_patient = _csv(store, run_id, tmp_path / "p.csv", per="patient").iloc[0]
    assert (per_patient["dme"], per_patient["urgency"]) == ("yes", Urgency.REFERABLE.label)
    assert "ophthalmologist" in per_patient["follow_up"]

    # the PDF: the patient's page and the run's pages
    text = _pdf_text(pdf_report(store, run_id, tmp_path / "p.pdf", patient="7"))
    assert "Referable: yes; vision-threatening: no" in text
    assert statement in text and "DME: no (p 0.10, threshold 0.500)" in text
    assert f"Eye: right - {Urgency.REFERABLE.label}; DME: yes" in text
    assert f"Result: {Urgency.REFERABLE.label}; worst grade Mild NPDR; DME: yes" in text
    assert "ophthalmologist" in text
    run_text = _pdf_text(pdf_report(store, run_id, tmp_path / "r.pdf"))
    assert "DME threshold 0.500" in run_text and " ".join(DME_SCOPE.split()) in run_text

    # the Compare-tiers row
    row = compare_row(Analysis(SimpleNamespace(), bundles["dme"], prediction=pred), None)
    assert (row["referable"], row["DME"], row["result"]) == ("YES", "YES (p 0.80)", DME_HEADLINE)

    # the batch page's stored result
    at = _detail_app(str(store.path), run_id, "7_right.jpg").run()
    assert not at.exception, [e.value for e in at.exception]
    text = _all_text(at)
    assert DME_HEADLINE in text and statement in text
    assert "macular oedema (DME): **YES**" in text and "ophthalmologist" in text


def test_a_bundle_without_dme_says_not_assessed_everywhere(bundles, prepared, tmp_path):
    predictor = Predictor(bundles["plain"], device="cpu")
    assert not predictor.has_dme and predictor.settings().dme_threshold is None
    pred = _predict(predictor, prepared, None)
    assert (pred.grade, pred.p_dme, pred.dme, pred.referable) == (1, None, None, False)
    assert pred.decision.headline == HEADLINES[Urgency.MILD]

    card = card_fields(pred)
    assert (card["dme"], card["dme_statement"]) == ("not assessed", DME_NOT_ASSESSED)
    at = _card_app(pred).run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["Macular oedema (DME)"] == "not assessed"
    assert DME_NOT_ASSESSED in _all_text(at)

    store, run_id = _screened(tmp_path, predictor, {"7_right.jpg": pred, "7_left.jpg": pred})
    wl = store.worklist(run_id)
    assert set(photos_frame(wl.images, store, thumbnails=False)["DME"]) == {"not assessed"}
    assert patients_frame(wl.patients, US).iloc[0]["DME"] == "not assessed"
    assert wl.patients[0].dme is None

    csv = _csv(store, run_id, tmp_path / "w.csv")
    assert set(csv["dme"]) == {"not assessed"}
    assert set(csv["p_dme"]) == {""} and set(csv["dme_threshold"]) == {""}
    assert _csv(store, run_id, tmp_path / "p.csv", per="patient").iloc[0]["dme"] == "not assessed"

    text = _pdf_text(pdf_report(store, run_id, tmp_path / "p.pdf", patient="7"))
    assert text.count(DME_NOT_ASSESSED) >= 2  # each photo, and the legend
    assert "DME: not assessed" in text and "DME: no " not in text and "DME: no (" not in text
    assert "DME: yes" not in text
    run_text = _pdf_text(pdf_report(store, run_id, tmp_path / "r.pdf"))
    assert "no DME output" in run_text and DME_NOT_ASSESSED in run_text

    row = compare_row(Analysis(SimpleNamespace(), bundles["plain"], prediction=pred), None)
    assert row["DME"] == "not assessed"

    at = _detail_app(str(store.path), run_id, "7_right.jpg").run()
    assert not at.exception, [e.value for e in at.exception]
    text = _all_text(at)
    assert DME_NOT_ASSESSED in text and "macular oedema (DME): **not assessed**" in text


@pytest.mark.parametrize("has_dme", [True, False])
def test_heatmap_picker_offers_the_dme_output_only_when_the_bundle_has_one(has_dme):
    def script(has_dme: bool) -> None:
        from dashboard.components.heatmap import target_ui

        target_ui(1, key="t", has_dme=has_dme)

    at = AppTest.from_function(script, args=(has_dme,), default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    from dashboard.components.heatmap import DME_TARGET_LABEL

    options = list(at.selectbox(key="t").options)
    assert options[0].startswith("the displayed grade (1")
    assert (DME_TARGET_LABEL in options) == has_dme
    if has_dme:
        assert at.selectbox(key="t").set_value("dme").run().selectbox(key="t").value == "dme"
