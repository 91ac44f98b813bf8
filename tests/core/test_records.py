"""Typed records across the core -> dashboard boundary: settings and run kinds are fields,
not dict keys or the end of an English sentence."""

from __future__ import annotations

import dataclasses

import pytest

from core.manifest import CalibrationSpec
from core.predict import Predictor
from core.records import PredictionSettings, RunKind, RunSettings
from core.screening import screen
from core.store import Store
from core.synthetic import write_clinic_folder
from dashboard.components.batch_run import is_folder_run
from tests.helpers import fundus_like, make_tiny_bundle


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    bundle = make_tiny_bundle(root, "t", calibration=CalibrationSpec(
        referable_threshold=0.37, vision_threatening_threshold=0.61))
    # a clinic folder whose name happens to end like the old upload sentence
    folder = root / "3 uploaded or listed item(s)"
    write_clinic_folder(folder, 2, seed=5, size=160)
    return root, bundle, folder


def test_prediction_settings_are_typed(setup):
    _, bundle, _ = setup
    s = Predictor(bundle, "cpu").predict(fundus_like(3, 192)).settings
    assert isinstance(s, PredictionSettings)
    assert (s.referable_threshold, s.vision_threatening_threshold) == (0.37, 0.61)
    assert s.bundle_key == bundle.key and s.preprocessing == bundle.manifest.preprocessing
    with pytest.raises(AttributeError):
        s.referable_treshold  # noqa: B018 - a misspelt or renamed field fails, never shows 0
    assert {f.name for f in dataclasses.fields(s)} <= set(s.to_json())


def test_run_kind_is_a_field_not_a_sentence(setup, tmp_path):
    _, bundle, folder = setup
    store = Store(tmp_path / "db.sqlite")
    by_folder = store.run(screen(folder, [bundle], store, workers=0))
    photo = next(p for p in folder.rglob("*.jp*g"))
    uploaded = store.run(screen([(photo.name, photo.read_bytes())], [bundle], store, workers=0))
    assert (by_folder.kind, uploaded.kind) == (RunKind.FOLDER, RunKind.UPLOAD)
    assert is_folder_run(by_folder) and not is_folder_run(uploaded)
    model = by_folder.run_settings.models[bundle.key]
    assert (model.referable_threshold, model.vision_threatening_threshold) == (0.37, 0.61)
    assert model.demo is True and model.name == "t"


def test_runs_stored_before_kind_existed_still_read():
    legacy_upload = RunSettings.from_json({"pattern": None}, "2 uploaded or listed item(s)")
    legacy_folder = RunSettings.from_json({"batch_size": 16}, "/clinic/day1")
    assert legacy_upload.kind is RunKind.UPLOAD and legacy_folder.kind is RunKind.FOLDER
    assert legacy_folder.batch_size == 16 and legacy_folder.models == {}
