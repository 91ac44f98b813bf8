"""Cross-dataset evaluation on two small synthetic sets (different seeds): gate-on and gate-off
metrics, ungradable counts, the gap to the bundle's validation metrics, and the written report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bundle import load_bundle
from core.cache import ModelCache
from core.errors import ConfigError
from core.predict import Predictor
from core.wording import DEMO_NOTICE, RESEARCH_USE_NOTICE
from tests.helpers import make_tiny_bundle
from training.common.metrics import evaluate
from training.evaluation.evaluate_cross_dataset import (
    DatasetSpec,
    evaluate_dataset,
    gated_intervals,
    generalisation_gap,
    main,
    parse_dataset_spec,
)
from training.evaluation.held_out import SECTION

VALIDATION = evaluate(np.array([0, 1, 2, 3, 4, 0, 2, 4]),
                      np.full((8, 5), 0.2) + np.eye(5)[[0, 1, 2, 2, 4, 1, 2, 3]])


def _dataset(folder: Path, seed: int, extra: bool) -> Path:
    from core.synthetic import write_aptos_dataset

    write_aptos_dataset(folder, 10, seed=seed, size=160)
    if extra:  # one photo the gate must reject, one file that cannot be decoded
        Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(folder / "train_images/black.png")
        (folder / "train_images/broken.png").write_bytes(b"\x89PNG not really")
        with (folder / "train.csv").open("a", newline="") as fh:
            csv.writer(fh).writerows([["black", 2], ["broken", 0]])
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cross")
    bundle = make_tiny_bundle(tmp, "cnn", evaluation=VALIDATION)
    return bundle, _dataset(tmp / "a", 21, extra=True), _dataset(tmp / "b", 22, extra=False)


def test_dataset_specs_parse_presets_and_labels():
    spec = parse_dataset_spec("messidor2:m/data.csv:m/IMAGES")
    assert (spec.name, spec.preset, spec.csv, spec.images) == (
        "messidor2", "messidor2", Path("m/data.csv"), Path("m/IMAGES"))
    spec = parse_dataset_spec("site-b=aptos:b/train.csv:")
    assert (spec.name, spec.preset, spec.images) == ("site-b", "aptos", None)
    for bad in ("aptos", "nope:x.csv:y", "x=nope:a.csv:b", "aptos::dir"):
        with pytest.raises(ConfigError):
            parse_dataset_spec(bad)


def test_gate_on_and_off_metrics_and_gap(setup):
    bundle, a, _ = setup
    predictor = Predictor(bundle, "cpu", cache=ModelCache())
    result = evaluate_dataset(predictor, DatasetSpec("a", "aptos", a / "train.csv", None))
    assert result.used == 12 and list(result.unreadable) == ["broken"]
    assert result.ungradable >= 1 and "no fundus field found" in result.reject_reasons
    assert result.ungated["n"] == 11
    assert result.gated["n"] + result.ungradable == result.ungated["n"]
    rows = {r["id"]: r for r in result.predictions}
    assert rows["black"]["gradable"] is False
    # gate-on rows agree with what the dashboard's Predictor says for the same photos
    for record_id in ("black", *sorted(rows)[:4]):
        pred = predictor.predict(a / "train_images" / f"{record_id}.png")
        assert pred.gradable == rows[record_id]["gradable"]
        if pred.gradable:
            assert pred.grade == rows[record_id]["predicted"]
            assert pred.p_referable == pytest.approx(rows[record_id]["p_referable"], abs=1e-6)
    # gate-off metrics are evaluate() on every decodable photo with the bundle's thresholds
    y = np.array([r["grade"] for r in result.predictions])
    probs = np.array([r["probs"] for r in result.predictions])
    assert result.ungated == evaluate(y, probs, referable_threshold=0.5,
                                      vision_threatening_threshold=0.5)
    qwk = result.gap["QWK"]
    assert qwk["validation"] == VALIDATION["kappa_quadratic"]
    assert qwk["delta"] == pytest.approx(result.gated["kappa_quadratic"] - qwk["validation"])


def test_intervals_are_of_the_served_grades_resampled_by_patient(setup):
    bundle, a, _ = setup
    result = evaluate_dataset(Predictor(bundle, "cpu", cache=ModelCache()),
                              DatasetSpec("a", "aptos", a / "train.csv", None), reps=200)
    qwk = result.intervals["kappa_quadratic"]
    assert qwk["value"] == pytest.approx(result.gated["kappa_quadratic"])
    assert result.intervals["n_photos"] == result.gated["n"]
    if qwk["ci95"] is not None:
        assert qwk["ci95"][0] <= qwk["value"] <= qwk["ci95"][1]
    # two eyes of one patient travel together: 4 photos, 2 patients
    rows = [{"id": f"{p}_{eye}", "patient": str(p), "grade": g, "predicted": g,
             "p_referable": float(g >= 2)} for p, g in ((1, 0), (2, 3)) for eye in ("l", "r")]
    ci = gated_intervals(rows, reps=50)
    assert (ci["n_photos"], ci["n_patients"]) == (4, 2)
    assert ci["kappa_quadratic"]["value"] == pytest.approx(1.0)
    assert gated_intervals([], reps=50) == {}


def test_gap_is_none_without_validation_metrics():
    gap = generalisation_gap({}, VALIDATION)
    assert gap["QWK"]["delta"] is None and gap["QWK"]["external"] == VALIDATION["kappa_quadratic"]
    assert gap["referable sensitivity"]["external"] == VALIDATION["referable"]["sensitivity"]


def test_cli_prints_both_tables_and_writes_reports(setup, tmp_path, capsys):
    bundle, a, b = setup
    code = main(["--checkpoint", str(bundle.path), "--device", "cpu", "--no-progress",
                 "--datasets", f"site-a=aptos:{a / 'train.csv'}:{a / 'train_images'}",
                 f"site-b=synthetic:{b / 'train.csv'}:", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0
    assert "### site-a" in out and "### site-b" in out and "gap (gate on - validation)" in out
    assert "gate on, 95% interval" in out and " patients |" in out
    report = json.loads((tmp_path / "rep" / "cross_dataset.json").read_text())
    names = [d["spec"]["name"] for d in report["datasets"]]
    assert names == ["site-a", "site-b"]
    for d in report["datasets"]:
        assert d["gap"]["QWK"]["validation"] == VALIDATION["kappa_quadratic"]
        assert d["ungated"]["n"] == d["used"] - len(d["unreadable"])
    assert report["datasets"][0]["ungradable"] >= 1
    md = (tmp_path / "rep" / "cross_dataset.md").read_text()
    assert RESEARCH_USE_NOTICE in md and DEMO_NOTICE in md
    with (tmp_path / "rep" / "predictions_site-b.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 10


def test_cli_reports_a_bad_dataset_spec(setup, capsys):
    bundle, *_ = setup
    assert main(["--checkpoint", str(bundle.path), "--datasets", "kaggle:x.csv:y"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_attach_puts_the_held_out_figures_on_the_bundle(setup, tmp_path, capsys):
    bundle, a, b = setup
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    sha = load_bundle(copy).manifest.weights.sha256
    (copy / "MODEL_CARD.md").write_text("# tiny\n\nintro\n\n## Metrics of the best epoch, by "
                                        "split\n\n| metric | selection |\n\n## Data\n\nx\n")
    args = ["--checkpoint", str(copy), "--device", "cpu", "--no-progress", "--bootstrap", "50",
            "--out", str(tmp_path / "rep"), "--attach"]
    assert main([*args, "--datasets", f"fresh=synthetic:{b / 'train.csv'}:"]) == 0
    assert "attached to" in capsys.readouterr().out
    report = json.loads((tmp_path / "rep" / "cross_dataset.json").read_text())
    attached = load_bundle(copy).manifest.evaluation["held_out"]["results"]
    assert attached["fresh"] == report["datasets"][0]["intervals"]  # the printed figures, as is
    # a second dataset adds a row; the card keeps one section, before the per-split metrics
    assert main([*args, "--datasets", f"other=aptos:{a / 'train.csv'}:{a / 'train_images'}"]) == 0
    again = load_bundle(copy)
    assert set(again.manifest.evaluation["held_out"]["results"]) == {"fresh", "other"}
    assert again.manifest.weights.sha256 == sha
    card = (copy / "MODEL_CARD.md").read_text()
    assert card.count(SECTION) == 1 and card.count("| fresh |") == card.count("| other |") == 1
    assert card.index("intro") < card.index(SECTION) < card.index("## Metrics of the best epoch")
    assert card.endswith("## Data\n\nx\n")
    kappa = attached["fresh"]["kappa_quadratic"]
    assert f"{kappa['value']:.3f} ({kappa['ci95'][0]:.3f}-{kappa['ci95'][1]:.3f})" in card
    assert main([*args, "--bootstrap", "0", "--datasets", f"x=synthetic:{b / 'train.csv'}:"]) == 2
    assert "--attach needs intervals" in capsys.readouterr().err
