"""A DME head end to end on stand-in sources: trained with its loss masked where a source has
no DME label, calibrated on its own, served by the Predictor, measured per source held out."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from core.bundle import load_bundle
from core.predict import Predictor
from tests.training.conftest import tiny_overrides
from tests.training.evaluation.test_multi_source import IDRID_IMAGES, _graded, _stand_ins
from training.evaluation.multi_source import main
from training.trainer.dme import masked_dme_loss, positive_weight


def test_the_masked_loss_ignores_rows_without_a_label():
    logit = torch.tensor([2.0, -1.0, 5.0, -3.0], requires_grad=True)
    target = torch.tensor([1, -1, 0, -1])
    loss = masked_dme_loss(logit, target)
    labelled = torch.nn.functional.binary_cross_entropy_with_logits(
        logit[[0, 2]], torch.tensor([1.0, 0.0]))
    assert torch.isclose(loss, labelled)
    loss.backward()
    assert logit.grad[1] == 0 and logit.grad[3] == 0 and logit.grad[0] != 0 and logit.grad[2] != 0
    # changing an unlabelled row's logit changes nothing
    moved = masked_dme_loss(torch.tensor([2.0, 9.0, 5.0, -9.0]), target)
    assert torch.isclose(moved, labelled)


def test_a_batch_without_labels_gives_zero_loss_and_a_graph():
    logit = torch.randn(4, requires_grad=True)
    loss = masked_dme_loss(logit, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logit.grad) == 0


def test_implied_negatives_label_unlabelled_grade_0_1_photos_only():
    from types import SimpleNamespace as R

    from training.trainer.dme import dme_labels

    records = [R(dme=1, grade=1), R(dme=None, grade=0), R(dme=None, grade=1),
               R(dme=None, grade=2), R(dme=0, grade=3)]
    assert dme_labels(records).tolist() == [1, -1, -1, -1, 0]
    assert dme_labels(records, implied_negative=True).tolist() == [1, 0, 0, -1, 0]


def test_positive_weight_counts_labelled_rows_only():
    assert positive_weight([1, 0, 0, 0, -1, -1, -1]) == 3.0
    assert positive_weight([-1, -1]) == 1.0


def _dme_stand_ins(root, photos):
    """Messidor-2 and IDRiD with DME labels (DME where grade >= 2, plus one grade-1 photo),
    EyePACS without any: the head must learn from the first two only."""
    return _stand_ins(root, photos, messidor_dme=lambda i, g: int(g >= 2 or i == 1),
                      idrid_risk=lambda i, g: 2 if g >= 2 else g)


@pytest.fixture(scope="module")
def dme_run(tmp_path_factory, synthetic_aptos):
    tmp = tmp_path_factory.mktemp("dme")
    photos = _graded(synthetic_aptos)
    config = {
        "run_name": "mixdme", "out_dir": str(tmp / "runs"), "bundle_dir": str(tmp / "shipped"),
        "demo": True, "tensorboard": False, "flip_tta": True,
        "data": {"sources": _dme_stand_ins(tmp, photos), "test_fraction": 0.25,
                 "val_fraction": 0.2, "calibration_fraction": 0.25,
                 "cache_dir": str(tmp / "cache"), "num_workers": 0},
        "model": {"tier": "baseline", "name": "resnet10t", "dme_head": True},
        "optim": {"epochs": 1, "batch_size": 8, "freeze_epochs": 0, "warmup_epochs": 0.5},
        "preprocessing": {"input_size": 64},
    }
    path = tmp / "mixdme.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--config", str(path), "--attach", "--no-loso", "--bootstrap", "50",
                 "--no-progress"]) == 0
    return tmp


def test_the_bundle_declares_and_calibrates_its_dme_output(dme_run):
    bundle = load_bundle(dme_run / "shipped")
    m = bundle.manifest
    assert m.outputs == ("icdr_grade", "dme")
    assert m.architecture.kwargs["dme_head"] is True
    assert 0.0 < m.calibration.dme_threshold < 1.0 and m.calibration.dme_temperature > 0
    dme = m.evaluation["dme"]
    assert dme["calibration"]["photos"] > 0 and "IDRiD risk 1" in dme["positive_class"]


def test_served_predictions_carry_p_dme_and_refer_on_it(dme_run):
    predictor = Predictor(load_bundle(dme_run / "shipped"), "cpu")
    rows = list((dme_run / "idrid" / IDRID_IMAGES).glob("*.jpg"))[:6]
    for p in predictor.predict_batch(rows):
        if not p.gradable:
            assert p.p_dme is None and p.dme is None
            continue
        assert 0.0 <= p.p_dme <= 1.0
        assert p.dme == (p.p_dme >= predictor.manifest.calibration.dme_threshold)
        assert p.referable == (p.grade >= 2 or p.dme)


def test_held_out_dme_figures_are_per_labelled_source_and_attached(dme_run):
    report = (dme_run / "runs" / "mixdme" / "per_source_report.md").read_text()
    assert "## DME output on the held-out split" in report
    assert "Referable by the grade alone (DME output ignored)" in report
    evaluation = json.loads((dme_run / "shipped" / "manifest.json").read_text())["evaluation"]
    results = evaluation["held_out_dme"]["results"]
    implied = "EyePACS (grade 0-1: no exudates, so no DME)"  # EyePACS has no DME label
    assert set(results) - {implied} <= {"Messidor-2", "IDRiD"} and set(results) - {implied}
    for name, r in results.items():
        assert r["n_photos"] > 0 and "auroc" in r
        if name == implied:  # measured on its grade 0-1 photos: specificity only
            assert r["implied"] and r["auroc"]["value"] is None and r["n_dme"] == 0
            assert 0.0 <= r["specificity"]["value"] <= 1.0
    card = (dme_run / "shipped" / "MODEL_CARD.md").read_text()
    assert "## DME output on held-out photos" in card


def test_a_dme_head_without_dme_labels_fails_before_training(tmp_path, synthetic_aptos):
    from core.errors import ConfigError
    from training.trainer.config import load_config
    from training.trainer.run import run

    overrides = tiny_overrides(synthetic_aptos, tmp_path / "c", tmp_path, "baseline")
    cfg = load_config(None, overrides + ["model.dme_head=true", "optim.epochs=1"])
    with pytest.raises(ConfigError, match="DME"):
        run(cfg, progress=False)
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_dme_head_is_refused_for_other_tiers():
    from core.errors import ConfigError
    from training.trainer.config import load_config

    with pytest.raises(ConfigError, match="dme_head"):
        load_config(None, ["model.tier=lora", "model.dme_head=true"])
