"""Issue 12: the grade, flags, urgency and review that the card, the worklist row, the CSV row
and the PDF show all come from ONE call of core.grading.decide, for random probabilities and
operating points (hypothesis). The photo runs through a real Predictor (tiny bundle) whose
probabilities are replaced by the drawn ones; the result then goes the screener's way into the
store, and out through the worklist table, the CSV and the PDF."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import grading
from core.grading import GRADE_NAMES, Thresholds
from core.predict import Predictor, prepare_image
from core.report import pdf_report, worklist_csv
from core.screening import _row
from core.store import FileRow, Store
from dashboard.components.result_card import card_fields
from dashboard.components.worklist import photos_frame
from tests.core.test_decision import check_invariants, probability_vectors
from tests.helpers import fundus_like, make_tiny_bundle

pypdf = pytest.importorskip("pypdf")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("m"), "tiny-decide", demo=False,
                              evaluation={"referable": {"auroc": 0.95}, "kappa_quadratic": 0.8})
    p = Predictor(bundle, device="cpu")
    return p


@pytest.fixture(scope="module")
def prepared(predictor):
    return prepare_image(fundus_like(3), predictor.manifest.preprocessing)


def _pdf_text(path) -> str:
    return " ".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(probability_vectors(), st.floats(0.05, 0.95), st.floats(0.05, 0.95),
       st.one_of(st.none(), st.lists(st.floats(0.0, 4.0), min_size=4, max_size=4)
                 .map(lambda c: tuple(sorted(c)))))
def test_card_worklist_csv_and_pdf_show_one_decision(predictor, prepared, tmp_path_factory, probs,
                                                     t_ref, t_vt, cuts):
    assert prepared.quality.gradable, prepared.quality
    rule = Thresholds(t_ref, t_vt, cuts)
    with mock.patch.object(predictor, "thresholds", rule), \
            mock.patch.object(predictor, "scores", lambda batch: (np.array([probs]), None)), \
            mock.patch.object(grading, "decide", wraps=grading.decide) as decide:
        pred = predictor.predict_prepared([prepared])[0]
        assert decide.call_count == 1  # one call decided this photo
        d = pred.decision
        check_invariants(d, probs, rule)
        assert (pred.grade, pred.referable, pred.vision_threatening, pred.confidence) == (
            d.grade, d.referable, d.vision_threatening, d.confidence)

        # the card
        card = card_fields(pred)
        assert card["headline"] == d.headline
        assert card["grade"] == f"{d.grade} - {GRADE_NAMES[d.grade]}"
        assert card["referable"] == ("YES" if d.referable else "no")
        assert card["vision_threatening"] == ("YES" if d.vision_threatening else "no")
        assert card["urgency"] == d.urgency.label
        assert card["review"] == "; ".join(d.review_reasons)

        # the screener's stored row, the worklist table, the CSV and the PDF
        tmp = tmp_path_factory.mktemp("run")
        store = Store(tmp / "db.sqlite")
        key = predictor.bundle.key
        run_id = store.create_run("test", [key], {"models": {key: {
            "name": pred.model, "version": pred.version, "demo": False,
            "referable_threshold": t_ref, "vision_threatening_threshold": t_vt}}})
        f = FileRow(run_id, "11_left.jpg", "h11", "11", "left", 1)
        store.add_batch([f], [_row(f, pred, key)])
        store.finish_run(run_id)
        wl = store.worklist(run_id)
        row = photos_frame(wl.images, store, thumbnails=False).iloc[0]
        assert row["urgency"] == d.urgency.label
        assert row["grade"] == f"{d.grade} - {GRADE_NAMES[d.grade]}"
        assert row["needs review"] == "; ".join(d.review_reasons)

        csv = pd.read_csv(worklist_csv(store, run_id, tmp / "w.csv"), comment="#",
                          keep_default_na=False, dtype=str).iloc[0]
        assert int(csv["grade"]) == d.grade and csv["grade_name"] == GRADE_NAMES[d.grade]
        assert csv["referable"] == ("yes" if d.referable else "no")
        assert csv["vtdr"] == ("yes" if d.vision_threatening else "no")
        assert csv["urgency"] == d.urgency.label
        assert csv["follow_up"] == d.guidance().action
        assert csv["review"] == ("yes" if d.review else "no")
        assert csv["review_reasons"] == "; ".join(d.review_reasons)

        text = " ".join(_pdf_text(pdf_report(store, run_id, tmp / "p.pdf", patient="11")).split())
        assert f"Urgency: {d.urgency.label}" in text
        assert f"Grade: {GRADE_NAMES[d.grade]};" in text
        assert (f"Referable: {'yes' if d.referable else 'no'}; vision-threatening: "
                f"{'yes' if d.vision_threatening else 'no'}") in text
        assert " ".join(d.guidance().action.split()) in text
        assert ("Review:" in text) == d.review
        assert decide.call_count == 1  # nothing downstream decided again
