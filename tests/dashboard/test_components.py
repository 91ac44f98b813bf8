"""Widget-free helpers of dashboard.components: the numbers the pages show come from here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core.explain import Explanation
from core.preprocessing import PreprocessSpec
from core.quality import QualityReport
from core.records import PredictionSettings
from dashboard.components.bundles import bundle_label, format_params, graders
from dashboard.components.heatmap import model_input_rgb, scaled_heatmap
from dashboard.components.probability_chart import probability_figure
from dashboard.components.result_card import band_note, headline, settings_rows
from dashboard.components.signoff import validate
from dashboard.components.upload import DEGRADED, SAMPLES, sample_bytes

SETTINGS = PredictionSettings(PreprocessSpec(input_size=64), 1.0, 0.3, 0.5, None, False, "cpu",
                              "m@1#abc")


def _prediction(grade, referable=None, vt=None):
    from core.predict import Prediction

    level = "good" if grade is not None else "reject"
    probs = None if grade is None else tuple(0.8 if g == grade else 0.05 for g in range(5))
    return Prediction(grade, probs, None, None, referable, vt, None,
                      QualityReport(level, (), {}), "m", "1", 12.0,
                      settings=SETTINGS)


def test_model_input_is_denormalised_exactly():
    spec = PreprocessSpec(input_size=4)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    tensor = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - mean) / std
    assert np.abs(model_input_rgb(tensor, spec).astype(int) - rgb).max() <= 1


def test_common_scale_makes_weak_maps_weak():
    heat = np.ones((2, 2), np.float32)
    weak = Explanation(heat, "gradcam", "t", 0, "l", raw_max=0.5)
    assert scaled_heatmap(weak, None) is heat
    assert scaled_heatmap(weak, 2.0).max() == pytest.approx(0.25)


def test_headline_leads_with_the_decision():
    assert headline(_prediction(None)) == "Ungradable - re-image or refer"
    assert headline(_prediction(4, True, True)).startswith("Vision-threatening")
    assert headline(_prediction(2, True, False)).startswith("Referable")
    assert headline(_prediction(1, False, False)).startswith("Not referable")
    # the bundle's operating point wins over argmax: grade 1 above the referable threshold
    assert headline(_prediction(1, True, False)).startswith("Referable")


def test_band_note_names_the_band_the_flags_allow():
    # 509_left's card: 69% on No DR, referred at a low threshold, so grade 2 is shown
    referred = dataclasses.replace(_prediction(2, True, False),
                                   probs=(0.69, 0.17, 0.09, 0.04, 0.01))
    assert ("put the result in grade 2 (referable, not vision-threatening);"
            in band_note(referred, top=0))
    urgent = dataclasses.replace(_prediction(3, True, True), probs=(0.4, 0.3, 0.1, 0.15, 0.05))
    assert "put the result in grades 3-4 (vision-threatening);" in band_note(urgent, top=0)
    routine = dataclasses.replace(_prediction(1, False, False), probs=(0.1, 0.3, 0.5, 0.05, 0.05))
    assert "put the result in grades 0-1 (not referable);" in band_note(routine, top=2)


def test_settings_rows_record_model_and_thresholds():
    rows = settings_rows(_prediction(2, True, False))
    assert rows["Model"] == "m" and rows["Version"] == "1"
    assert rows["Referable threshold"] == "0.3" and '"input_size": 64' in rows["Preprocessing"]
    assert rows["Grade decided by"].endswith("then the most probable grade in that band")
    ordinal = dataclasses.replace(_prediction(2, True, False), settings=dataclasses.replace(
        SETTINGS, grade_thresholds=(0.5, 1.2, 2.8, 2.9)))
    assert "cut points [0.500, 1.200, 2.800, 2.900] on the expected grade" in \
        settings_rows(ordinal)["Grade decided by"]
    assert "severe NPDR vs PDR" not in settings_rows(ordinal)["Grade decided by"]
    vt_rule = dataclasses.replace(ordinal, settings=dataclasses.replace(
        ordinal.settings, vt_grade_by_probability=True))
    assert settings_rows(vt_rule)["Grade decided by"].endswith(
        "severe NPDR vs PDR: the more probable of the two")


def test_signoff_validation():
    pred = _prediction(2, True, False)
    assert "clinician" in validate(pred, "accept", "2 - Moderate NPDR", "", " ")
    ok = validate(pred, "accept", "4 - PDR", "", "Dr A")
    assert (ok.decision, ok.final_grade) == ("accept", 2)  # accept keeps the model's grade
    assert "reason" in validate(pred, "override", "4 - PDR", "", "Dr A")
    over = validate(pred, "override", "4 - PDR", " NVD ", "Dr A")
    assert (over.final_grade, over.reason) == (4, "NVD")
    assert validate(pred, "override", "Ungradable", "media opacity", "Dr A").final_grade is None


def test_probability_chart_marks_referable_grades_and_prediction():
    fig = probability_figure([0.1, 0.1, 0.6, 0.1, 0.1], 2)
    bar = fig.data[0]
    assert list(bar.y) == [0.1, 0.1, 0.6, 0.1, 0.1]
    assert len(set(bar.marker.color[:2])) == 1 and bar.marker.color[2] != bar.marker.color[0]
    assert list(bar.marker.line.width) == [0, 0, 3, 0, 0]


def test_labels_and_graders(tmp_path):
    from core.bundle import discover_bundles
    from tests.helpers import TINY_VIT, make_tiny_bundle

    make_tiny_bundle(tmp_path, "g")
    make_tiny_bundle(tmp_path, "enc", arch=TINY_VIT, outputs=("features",), demo=False)
    found = discover_bundles(tmp_path)
    assert [b.name for b in graders(found)] == ["g"]
    assert bundle_label(graders(found)[0]).startswith("DEMO - g 0.1")
    assert format_params(4_900_000) == "4.9 M" and format_params(153_000) == "153 k"


def test_synthetic_samples_decode_and_degraded_one_is_rejected():
    from core.images import decode_image
    from core.quality import assess

    assert len(SAMPLES) == 6
    clean = decode_image(sample_bytes(SAMPLES[0]))
    assert assess(clean).gradable
    assert not assess(decode_image(sample_bytes(DEGRADED))).gradable


def _notices_app(tmp_path: Path, bundle_paths: list[Path]):
    """demo_notice_ui over these bundles, run in AppTest."""
    from streamlit.testing.v1 import AppTest

    script = tmp_path / "page.py"
    script.write_text(
        "from core.bundle import load_bundle\n"
        "from dashboard.components.notice import demo_notice_ui\n"
        f"demo_notice_ui([load_bundle(p) for p in {[str(p) for p in bundle_paths]!r}])\n")
    return AppTest.from_file(str(script), default_timeout=60).run()


def test_near_chance_bundles_are_flagged(tmp_path, monkeypatch):
    from tests.helpers import make_tiny_bundle

    weak = make_tiny_bundle(tmp_path, "weak", evaluation={"kappa_quadratic": 0.04})
    fine = make_tiny_bundle(tmp_path, "fine", evaluation={"kappa_quadratic": 0.8})
    at = _notices_app(tmp_path, [weak.path, fine.path])
    warnings = [w.value for w in at.warning]
    assert any("weak (validation kappa 0.04)" in w for w in warnings)
    assert not any("fine" in w for w in warnings)


def test_the_default_grader_is_a_measured_model_trained_on_real_photos(tmp_path):
    from core.bundle import discover_bundles
    from dashboard.components.bundles import graders
    from tests.helpers import make_tiny_bundle

    measured = {"referable": {"auroc": 0.86}, "kappa_quadratic": 0.5}
    make_tiny_bundle(tmp_path, "a-demo", evaluation=measured)  # demo: never the default
    make_tiny_bundle(tmp_path, "b-unmeasured", demo=False)  # no figures: not the default
    make_tiny_bundle(tmp_path, "c-chance", demo=False,
                     evaluation={"referable": {"auroc": 0.52}, "kappa_quadratic": 0.03})
    make_tiny_bundle(tmp_path, "z-real", demo=False, evaluation=measured)
    make_tiny_bundle(tmp_path, "y-real-weak", demo=False,
                     evaluation={"referable": {"auroc": 0.6}, "kappa_quadratic": 0.1})
    names = [b.name for b in graders(discover_bundles(tmp_path))]
    assert names == ["z-real", "c-chance", "y-real-weak", "a-demo", "b-unmeasured"]


def test_of_two_real_models_the_one_measured_on_more_held_out_photos_is_the_default(tmp_path):
    """multisource-lite0 (481 held-out photos of three sets) before eyepacs-lite0 (a
    cross-validation of 395 photos of one), whatever their names."""
    from core.bundle import discover_bundles
    from dashboard.components.bundles import graders, held_out_photos
    from tests.helpers import make_tiny_bundle

    measured = {"referable": {"auroc": 0.86}, "kappa_quadratic": 0.5}
    cv = measured | {"cross_validation": {"results": {"cv": {
        "n_photos": 395, "referable_auroc": {"value": 0.77}, "kappa_quadratic": {"value": 0.24}}}}}
    held = measured | {"held_out": {"results": {"EyePACS": {"n_photos": 204},
                                                "pooled": {"n_photos": 481}}}}
    make_tiny_bundle(tmp_path, "a-one-set", demo=False, evaluation=cv)
    make_tiny_bundle(tmp_path, "m-three-sets", demo=False, evaluation=held)
    make_tiny_bundle(tmp_path, "b-validation-only", demo=False, evaluation=measured)
    assert held_out_photos(held) == 481 and held_out_photos(measured) == 0
    names = [b.name for b in graders(discover_bundles(tmp_path))]
    assert names == ["m-three-sets", "a-one-set", "b-validation-only"]


def test_licence_notice_only_for_bundles_that_carry_a_licence(monkeypatch):
    """A ViT tier started from this project's own MAE encoder holds no RETFound weights: no
    CC BY-NC caption for it; an imported-RETFound one keeps it."""
    from types import SimpleNamespace

    import dashboard.components.notice as notice

    shown: list[str] = []
    monkeypatch.setattr(notice.st, "caption", shown.append)

    def vit(licence):
        return SimpleNamespace(manifest=SimpleNamespace(tier="retfound", license=licence))

    notice.licence_notice_ui([vit(None)])
    assert shown == []
    notice.licence_notice_ui([vit(None), vit("CC BY-NC 4.0 (derived from RETFound weights)")])
    assert len(shown) == 1 and "CC BY-NC" in shown[0]


def test_an_encoder_is_announced_as_an_encoder_not_as_a_grader_trained_on_photos(tmp_path):
    """The Models page lists encoder bundles too: "Trained on MAE pretraining ..." read as if
    they graded; they grade nothing."""
    models = Path(__file__).resolve().parents[2] / "models"
    names = ("mae-demo-encoder", "distilled-demo-encoder", "eyepacs-lite0")
    if not all((models / n / "manifest.json").is_file() for n in names):
        pytest.skip("the shipped bundles are not in models/")
    at = _notices_app(tmp_path, [models / n for n in names])
    infos = {i.value.split("**")[1]: i.value for i in at.info}
    assert "Encoder only, not a grader" in infos["mae-demo-encoder"]
    assert "(MAE pretraining by this project;" in infos["mae-demo-encoder"]
    assert "(feature distillation by this project;" in infos["distilled-demo-encoder"]
    assert "Trained on" not in infos["distilled-demo-encoder"]
    assert infos["eyepacs-lite0"].startswith("**eyepacs-lite0**: Trained on 395 EyePACS photos")
