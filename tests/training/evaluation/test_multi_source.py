"""training.evaluation.multi_source end to end on three stand-in sources in their distributors' layouts:
the held-out run, leave-one-source-out, per-source tables graded as served, resume, attach."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from training.evaluation import multi_source
from training.evaluation.multi_source import main

IDRID_LABELS = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
IDRID_IMAGES = "B. Disease Grading/1. Original Images/a. Training Set"


def _graded(synthetic_aptos: Path) -> list[tuple[Path, int]]:
    with (synthetic_aptos / "train.csv").open(newline="") as fh:
        return [(synthetic_aptos / "train_images" / f"{r['id_code']}.png", int(r["diagnosis"]))
                for r in csv.DictReader(fh)]


def _write(path: Path, header: list[str], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _no_dme(i: int, grade: int) -> int:
    return int(grade >= 3)


def _no_risk(i: int, grade: int) -> int:
    return 0


def _stand_ins(root: Path, photos: list[tuple[Path, int]], messidor_dme=_no_dme,
               idrid_risk=_no_risk) -> list[dict]:
    """16 synthetic photos per source, filed as each distributor files them; messidor_dme and
    idrid_risk give the i-th photo's DME label from its grade."""
    eyepacs, messidor, idrid = photos[:16], photos[16:32], photos[32:48]
    rows = []
    (root / "eyepacs" / "train").mkdir(parents=True)
    for i, (src, grade) in enumerate(eyepacs):
        name = f"{i // 2 + 1}_{'left' if i % 2 == 0 else 'right'}"
        shutil.copy(src, root / "eyepacs" / "train" / f"{name}.jpeg")
        rows.append((name, grade))
    _write(root / "eyepacs" / "trainLabels.csv", ["image", "level"], rows)
    rows = []
    (root / "messidor2" / "IMAGES").mkdir(parents=True)
    for i, (src, grade) in enumerate(messidor):
        name = f"200510{i // 2 + 1:02d}_4{i:04d}_0100_PP.jpg"  # two eyes per exam day
        shutil.copy(src, root / "messidor2" / "IMAGES" / name)
        rows.append((name, grade, messidor_dme(i, grade), 1))
    _write(root / "messidor2" / "messidor_data.csv",
           ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"], rows)
    rows = []
    (root / "idrid" / IDRID_IMAGES).mkdir(parents=True)
    for i, (src, grade) in enumerate(idrid):
        shutil.copy(src, root / "idrid" / IDRID_IMAGES / f"IDRiD_{i + 1:03d}.jpg")
        rows.append((f"IDRiD_{i + 1:03d}", grade, idrid_risk(i, grade)))
    _write(root / "idrid" / IDRID_LABELS,
           ["Image name", "Retinopathy grade", "Risk of macular edema "], rows)
    return [{"preset": p, "root": str(root / p)} for p in ("eyepacs", "messidor2", "idrid")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_aptos):
    """One whole command, run once: (its folder, its config path, printed report)."""
    tmp = tmp_path_factory.mktemp("multi")
    sources = _stand_ins(tmp, _graded(synthetic_aptos))
    config = {
        "run_name": "mix", "out_dir": str(tmp / "runs"), "bundle_dir": str(tmp / "shipped"),
        "demo": True, "tensorboard": False, "flip_tta": True,
        "data": {"sources": sources, "test_fraction": 0.25, "val_fraction": 0.25,
                 "calibration_fraction": 0.2, "cache_dir": str(tmp / "cache"),
                 "num_workers": 0},
        "model": {"tier": "baseline", "name": "resnet10t"},
        "optim": {"epochs": 1, "batch_size": 8, "freeze_epochs": 0, "warmup_epochs": 0.5,
                  "cpu_fast": True},
        "preprocessing": {"input_size": 64},
    }
    path = tmp / "mix.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--config", str(path), "--attach", "--bootstrap", "50", "--no-progress"]) == 0
    return tmp, path


def test_every_source_is_measured_on_its_held_out_photos_and_pooled(finished):
    tmp, _ = finished
    summary = json.loads((tmp / "runs" / "mix" / "per_source_summary.json").read_text())
    title, _, rows = summary["sections"][0]
    assert set(rows) == {f"mix on {s}" for s in ("EyePACS", "Messidor-2", "IDRiD", "pooled")}
    with (tmp / "runs" / "mix" / "test_predictions.csv").open(newline="") as fh:
        held = list(csv.DictReader(fh))
    by_source = {s: sum(r["source"] == s for r in held) for s in ("eyepacs", "messidor2", "idrid")}
    assert all(n > 0 for n in by_source.values()), by_source
    names = {"eyepacs": "EyePACS", "messidor2": "Messidor-2", "idrid": "IDRiD"}
    for source, n in by_source.items():
        assert rows[f"mix on {names[source]}"]["n_photos"] == n
    assert rows["mix on pooled"]["n_photos"] == len(held)


def test_leave_one_source_out_tests_each_source_whole_on_a_model_that_never_saw_it(finished):
    tmp, _ = finished
    summary = json.loads((tmp / "runs" / "mix" / "per_source_summary.json").read_text())
    loso = summary["sections"][-1]
    assert loso[0] == "Leave one source out"
    for source, name in (("eyepacs", "EyePACS"), ("messidor2", "Messidor-2"), ("idrid", "IDRiD")):
        assert loso[2][f"trained without {name}, tested on all of {name}"]["n_photos"] == 16
        run = tmp / "runs" / f"mix-without-{source}"
        with (run / "test_predictions.csv").open(newline="") as fh:
            assert {r["source"] for r in csv.DictReader(fh)} == {source}
        trained = json.loads((run / "bundle" / "manifest.json").read_text())
        note = trained["evaluation"]["split_notes"]["test"]
        assert note.startswith(f"held-out source {source}: every photo of it"), note


def test_the_shipped_bundle_names_its_sets_and_carries_the_table(finished):
    tmp, _ = finished
    manifest = json.loads((tmp / "shipped" / "manifest.json").read_text())
    short = manifest["provenance"]["training_data"].split(":")[0]
    with (tmp / "runs" / "mix" / "test_predictions.csv").open(newline="") as fh:
        tested = len(list(csv.DictReader(fh)))
    # the photos it was developed on: the held-out test photos are named, never counted
    assert short == f"{48 - tested} real photos from 3 sets (EyePACS, Messidor-2, IDRiD)"
    assert f"a further {tested} photos held out as the test set" in manifest["provenance"][
        "training_data"]
    held = manifest["evaluation"]["held_out"]
    assert "quality gate off" in held["what"]
    assert "held-out split: pooled" in held["results"]
    assert "leave-one-source-out: trained without IDRiD, tested on all of IDRiD" in held["results"]
    card = (tmp / "shipped" / "MODEL_CARD.md").read_text()
    assert "## Held-out evaluation" in card and "tested on all of Messidor-2" in card


def test_a_second_run_retrains_and_regrades_nothing(finished, monkeypatch, capsys):
    tmp, path = finished

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run or graded table was redone")

    monkeypatch.setattr("training.trainer.run.run", forbidden)
    monkeypatch.setattr(multi_source, "graded_rows", forbidden)
    assert main(["--config", str(path), "--attach", "--bootstrap", "50", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("already trained") == 4
    held = json.loads((tmp / "shipped" / "manifest.json").read_text())["evaluation"]["held_out"]
    assert len(held["results"]) == 4 + 3  # the table replaced, not appended to


def test_a_config_without_sources_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump({"data": {"preset": "eyepacs", "csv": "x.csv"}}))
    assert main(["--config", str(path)]) == 2
    assert "needs data.sources and data.test_fraction" in capsys.readouterr().err


def test_a_killed_run_resumes_and_another_recipes_folder_starts_over(tmp_path, monkeypatch):
    """Seen when the shipped recipe turned bf16 off: the leave-one-set-out folders of the bf16
    recipe held checkpoints of other settings, and resuming them was refused."""
    from training.trainer.config import load_config, save_config

    calls: list[bool] = []
    monkeypatch.setattr("training.trainer.run.run", lambda cfg, resume, progress: calls.append(resume))
    cfg = load_config(None, [f"out_dir={tmp_path}", "run_name=r", "optim.lr=0.01"])
    multi_source.train_if_needed(cfg, progress=False)  # nothing there yet: a fresh start
    (tmp_path / "r").mkdir()
    save_config(cfg, tmp_path / "r" / "config.yaml")  # killed after it started
    multi_source.train_if_needed(cfg, progress=False)
    other = load_config(None, [f"out_dir={tmp_path}", "run_name=r", "optim.lr=0.02"])
    multi_source.train_if_needed(other, progress=False)
    assert calls == [False, True, False]
