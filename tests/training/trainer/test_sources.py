"""The public sets read in their distributors' own layouts, several sets mixed in one run, and
fixed held-out test splits (a seeded fraction, or one whole source left out).

Stand-in folders are written here with a few 32 px JPEGs in each exact layout; one test reads
the real ../shared/realdata folders when they are beside the checkout.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.errors import ConfigError
from core.manifest import CalibrationSpec
from training.trainer.config import DataConfig, SourceConfig, load_config
from training.trainer.datasets import (
    LabelledImage,
    assign_folds,
    load_records,
    messidor2_exams,
    split_by_patient,
)
from training.trainer.splits import held_out_note, make_splits, split_notes, write_predictions

REALDATA = Path(__file__).resolve().parents[3].parent / "shared" / "realdata"
IDRID_LABELS = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
IDRID_IMAGES = "B. Disease Grading/1. Original Images/a. Training Set"


# ----------------------------------------------------------------------------- stand-in folders
def _jpeg(path: Path, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, shade // 2, 10)).save(path, format="JPEG")


def _csv(path: Path, header: list[str], rows: list[tuple], line_end: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator=line_end)
        writer.writerow(header)
        writer.writerows(rows)


def write_eyepacs(root: Path, patients: int = 8) -> Path:
    """Kaggle's layout: trainLabels.csv (image,level) and train/<image>.jpeg."""
    rows = [(f"{p}_{eye}", (p + (eye == "right")) % 3) for p in range(1, patients + 1)
            for eye in ("left", "right")]
    for image, _ in rows:
        _jpeg(root / "train" / f"{image}.jpeg")
    _csv(root / "trainLabels.csv", ["image", "level"], rows)
    return root


MESSIDOR_ROWS = [  # image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable
    ("20051020_43808_0100_PP.jpg", 1, 0, 1),
    ("20051020_43882_0100_PP.jpg", 2, 1, 1),  # same date and department: same exam
    ("20051021_11111_0100_PP.jpg", 0, 0, 1),  # another day
    ("20051020_43900_0200_PP.jpg", 0, 0, 1),  # another department
    ("IM000012.jpg", 0, 0, 1),
    ("IM000013.jpg", 3, 1, 1),  # 12 and 13: one exam
    ("IM000014.jpg", 0, 0, 1),  # 13 is taken, so 14 starts the next pair
    ("IM000015.jpg", 1, 0, 1),
    ("IM000020.jpg", 2, 0, 1),  # no IM000021: alone
    ("IM000030.jpg", "", 0, 1),  # no grade
    ("IM000031.jpg", 1, 0, 0),  # adjudicated ungradable
]


def write_messidor2(root: Path, rows=MESSIDOR_ROWS) -> Path:
    """The adjudicated table's layout: messidor_data.csv and IMAGES/<image_id>."""
    for image_id, *_ in rows:
        _jpeg(root / "IMAGES" / image_id)
    _csv(root / "messidor_data.csv",
         ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"], rows)
    return root


IDRID_ROWS = [("IDRiD_001", 3, 2), ("IDRiD_002", 0, 0), ("IDRiD_003", 2, 1), ("IDRiD_004", "", 0)]


def write_idrid(root: Path, rows=IDRID_ROWS) -> Path:
    """IDRiD's "B. Disease Grading" layout, with its CSV's quirks: a header ending in a space,
    trailing empty columns, CRLF line ends and blank trailing rows."""
    for image, *_ in rows:
        _jpeg(root / IDRID_IMAGES / f"{image}.jpg")
    _csv(root / IDRID_LABELS, ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""],
         [(*row, "", "") for row in rows] + [("", "", "", "", "")] * 2, line_end="\r\n")
    return root


# ----------------------------------------------------------------------------- layouts
def test_eyepacs_layout_under_its_root(tmp_path):
    records, summary = load_records(DataConfig(preset="eyepacs", root=str(write_eyepacs(tmp_path))))
    assert summary["used"] == summary["rows"] == 16 and summary["dropped"] == {}
    by_id = {r.id: r for r in records}
    assert by_id["3_left"].path == tmp_path / "train" / "3_left.jpeg"
    assert by_id["3_left"].patient == by_id["3_right"].patient == "3"
    assert {r.source for r in records} == {"eyepacs"} and {r.dme for r in records} == {None}
    assert summary["sources"]["eyepacs"]["used"] == 16


def test_messidor2_layout_groups_examinations_and_skips_rows_without_a_grade(tmp_path, capsys):
    records, summary = load_records(DataConfig(preset="messidor2",
                                               root=str(write_messidor2(tmp_path))))
    group = {r.id: r.patient for r in records}
    assert group["20051020_43808_0100_PP.jpg"] == group["20051020_43882_0100_PP.jpg"] == \
        "20051020_0100"
    assert group["20051021_11111_0100_PP.jpg"] == "20051021_0100"
    assert group["20051020_43900_0200_PP.jpg"] == "20051020_0200"
    assert group["IM000012.jpg"] == group["IM000013.jpg"] == "IM000012"
    assert group["IM000014.jpg"] == group["IM000015.jpg"] == "IM000014"
    assert group["IM000020.jpg"] == "IM000020"
    assert summary["rows"] == 11 and summary["used"] == 9
    assert summary["dropped"] == {"no grade": 1, "ungradable": 1}
    assert {r.id: r.dme for r in records}["IM000013.jpg"] == 1
    assert sum(r.dme for r in records) == 2 and {r.dme_risk for r in records} == {None}
    out = capsys.readouterr().out
    assert out.count("messidor2: skipped") == 1
    assert "messidor2: skipped 2 of 11 rows without a grade (1 no grade, 1 ungradable)" in out


def test_messidor2_brest_pairs_are_walked_greedily():
    ids = ["IM000001.jpg", "IM000002.jpg", "IM000003.jpg", "IM000005.jpg", "IM000006.jpg"]
    assert messidor2_exams(ids) == {"IM000001.jpg": "IM000001", "IM000002.jpg": "IM000001",
                                    "IM000003.jpg": "IM000003", "IM000005.jpg": "IM000005",
                                    "IM000006.jpg": "IM000005"}


def test_idrid_layout_reads_its_quirky_csv_and_macular_oedema(tmp_path, capsys):
    records, summary = load_records(DataConfig(preset="idrid", root=str(write_idrid(tmp_path))))
    assert [(r.id, r.grade, r.dme, r.dme_risk) for r in records] == [
        ("IDRiD_001", 3, 1, 2), ("IDRiD_002", 0, 0, 0), ("IDRiD_003", 2, 0, 1)]
    assert [r.patient for r in records] == [r.id for r in records]  # no patient ids: by image
    assert summary["rows"] == 4 and summary["dropped"] == {"no grade": 1}  # blank rows ignored
    assert "idrid: skipped 1 of 4 rows without a grade (no grade)" in capsys.readouterr().out
    by_csv, _ = load_records(DataConfig(preset="idrid", csv=str(tmp_path / IDRID_LABELS)))
    assert by_csv == records  # data.csv inside the layout finds the photos through it


def test_a_flat_idrid_copy_with_images_beside_the_csv_still_reads(tmp_path):
    name = Path(IDRID_LABELS).name
    _csv(tmp_path / name, ["Image name", "Retinopathy grade", "Risk of macular edema"],
         [("IDRiD_009", 4, 2)])
    _jpeg(tmp_path / "a. Training Set" / "IDRiD_009.jpg")
    records, _ = load_records(DataConfig(preset="idrid", csv=str(tmp_path / name)))
    assert [(r.id, r.grade, r.dme) for r in records] == [("IDRiD_009", 4, 1)]


# ----------------------------------------------------------------------------- mixed sources
def _three_sources(tmp_path: Path) -> list[dict]:
    """Enough groups per source that every split can hold each one."""
    messidor = [(f"200510{d:02d}_4{d:04d}_0100_PP.jpg", d % 2, 0, 1) for d in range(1, 9)]
    idrid = [(f"IDRiD_{i:03d}", i % 2 * 2, i % 3) for i in range(1, 11)]
    return [{"preset": "eyepacs", "root": str(write_eyepacs(tmp_path / "eyepacs"))},
            {"preset": "messidor2", "root": str(write_messidor2(tmp_path / "m2", messidor)),
             "name": "m2"},
            {"preset": "idrid", "root": str(write_idrid(tmp_path / "idrid", idrid))}]


def _config(tmp_path: Path, sources: list[dict], *overrides: str):
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": sources}}), encoding="utf-8")
    return load_config(path, list(overrides))


def test_mixed_sources_prefix_ids_and_groups_and_reach_every_split(tmp_path):
    cfg = _config(tmp_path, _three_sources(tmp_path), "data.test_fraction=0.2",
                  "data.calibration_fraction=0.2")
    assert [s.label for s in cfg.data.sources] == ["eyepacs", "m2", "idrid"]
    records, summary = load_records(cfg.data)
    assert len({r.id for r in records}) == len(records) == 16 + 8 + 10
    for r in records:
        assert r.id.startswith(f"{r.source}:") and r.patient.startswith(f"{r.source}:")
    assert {"eyepacs:3_left", "m2:20051001_40001_0100_PP.jpg", "idrid:IDRiD_001"} <= \
        {r.id for r in records}
    assert {k: v["used"] for k, v in summary["sources"].items()} == {"eyepacs": 16, "m2": 8,
                                                                      "idrid": 10}
    splits = make_splits(cfg, records)
    parts = {"train": splits.train, "selection": splits.selection,
             "calibration": splits.calibration, "test": splits.test}
    for name, part in parts.items():
        assert {r.source for r in part} == {"eyepacs", "m2", "idrid"}, name
    where = defaultdict(set)
    for name, part in parts.items():
        for r in part:
            where[r.patient].add(name)
    assert all(len(names) == 1 for names in where.values())  # no group straddles two splits
    assert sum(len(p) for p in parts.values()) == len(records)


def test_a_mixed_config_survives_its_saved_copy(tmp_path):
    """A run saves its resolved config; cross-validation reloads it to judge a finished fold."""
    from training.trainer.config import save_config

    cfg = _config(tmp_path, [{"preset": "eyepacs", "root": "a"},
                             {"preset": "idrid", "root": "b", "name": "india"}],
                  "data.hold_out_source=india")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert cfg.data.sources[1] == SourceConfig("idrid", root="b", name="india")


def test_sources_replace_the_single_source_fields(tmp_path):
    sources = [{"preset": "eyepacs", "root": "a"}, {"preset": "idrid", "root": "b"}]
    with pytest.raises(ConfigError, match="data.preset, data.csv"):
        _config(tmp_path, sources, "data.preset=eyepacs", "data.csv=x.csv")
    with pytest.raises(ConfigError, match="names must differ"):
        _config(tmp_path, [{"preset": "eyepacs", "root": "a"}, {"preset": "eyepacs", "root": "b"}])
    with pytest.raises(ConfigError, match="preset"):
        load_records(DataConfig(preset="idrid", sources=(SourceConfig("eyepacs", root="a"),)))


# ----------------------------------------------------------------------------- held-out tests
def _records(patients: int, sources=("eyepacs", "m2"), seed: int = 0) -> list[LabelledImage]:
    rng = np.random.default_rng(seed)
    out = []
    for source in sources:
        for p in range(patients):
            grade = int(rng.choice(5, p=[0.6, 0.1, 0.15, 0.07, 0.08]))
            out += [LabelledImage(f"{source}:{p}_{eye}", Path("x.jpeg"), grade, f"{source}:{p}",
                                  source) for eye in ("left", "right")]
    return out


SOURCES = ["data.sources=[{preset: eyepacs}, {preset: messidor2, name: m2}]"]


def test_test_fraction_is_fixed_by_the_seed_alone():
    records = _records(60)

    def test_ids(*overrides: str) -> list[str]:
        cfg = load_config(None, [*SOURCES, "data.test_fraction=0.25", *overrides])
        return [r.id for r in make_splits(cfg, records).test]

    first = test_ids("seed=3")
    assert first == test_ids("seed=3", "model.name=resnet10t", "optim.lr=0.01",
                             "preprocessing.input_size=128", "data.val_fraction=0.3",
                             "data.calibration_fraction=0.2", "data.train_fraction=0.5")
    assert first != test_ids("seed=4")
    test = [r for r in records if r.id in set(first)]
    assert {r.source for r in test} == {"eyepacs", "m2"}
    assert abs(len({r.patient for r in test}) - 0.25 * 120) <= 5
    splits = make_splits(load_config(None, [*SOURCES, "data.test_fraction=0.25", "seed=3"]),
                         records)
    rest = splits.train + splits.selection + splits.calibration
    assert not {r.patient for r in rest} & {r.patient for r in splits.test}
    assert "fixed held-out test split (25% of" in held_out_note(load_config(
        None, ["data.test_fraction=0.25"]).data)
    assert held_out_note(load_config(None, ["data.cv_fold=0"]).data) is None  # the CV note stays


def test_hold_out_source_tests_on_exactly_that_source():
    records = _records(30, sources=("eyepacs", "m2", "idrid"))
    cfg = load_config(None, ["data.sources=[{preset: eyepacs}, {preset: messidor2, name: m2}, "
                             "{preset: idrid}]", "data.hold_out_source=m2"])
    splits = make_splits(cfg, records)
    assert sorted(r.id for r in splits.test) == sorted(r.id for r in records if r.source == "m2")
    for part in (splits.train, splits.selection, splits.calibration):
        assert {r.source for r in part} == {"eyepacs", "idrid"}
    assert split_notes(False, held_out_note(cfg.data))["test"].startswith("held-out source m2")
    with pytest.raises(ConfigError, match=r"available: \['eyepacs', 'm2'\]"):
        load_config(None, [*SOURCES, "data.hold_out_source=messidor2"])


@pytest.mark.parametrize("chosen", [("data.cv_fold=1", "data.test_fraction=0.2"),
                                    ("data.cv_fold=0", "data.hold_out_source=m2"),
                                    ("data.test_fraction=0.1", "data.hold_out_source=m2")])
def test_one_run_has_one_test_set(chosen):
    with pytest.raises(ConfigError, match="set only one of"):
        load_config(None, [*SOURCES, *chosen])


@pytest.mark.parametrize("fraction", ["1.0", "-0.1"])
def test_test_fraction_range(fraction):
    with pytest.raises(ConfigError, match="data.test_fraction"):
        load_config(None, [f"data.test_fraction={fraction}"])


def test_hold_out_source_needs_another_source_to_train_on():
    with pytest.raises(ConfigError, match="at least two"):
        load_config(None, ["data.preset=eyepacs", "data.hold_out_source=eyepacs"])


def test_predictions_name_their_source_and_dme_after_the_old_columns(tmp_path):
    records = [LabelledImage("m2:a", Path("a"), 2, "m2:a", "m2", 1),
               LabelledImage("eyepacs:b", Path("b"), 0, "eyepacs:1", "eyepacs")]
    write_predictions(tmp_path / "p.csv", records, np.full((2, 5), 0.2), CalibrationSpec(), None)
    with (tmp_path / "p.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "patient", "grade", "fold", "p0", "p1", "p2", "p3", "p4",
                       "referable_threshold", "vision_threatening_threshold", "grade_cuts",
                       "vt_grade_by_probability", "source", "dme"]
    assert rows[1][-2:] == ["m2", "1"] and rows[2][-2:] == ["eyepacs", ""]


# ----------------------------------------------------------------------------- old splits kept
def _old_split_by_patient(records, val_fraction, seed):
    """split_by_patient before sources existed (stratum: worst grade alone)."""
    by_patient = defaultdict(list)
    for r in records:
        by_patient[r.patient].append(r)
    strata = defaultdict(list)
    for patient, items in sorted(by_patient.items()):
        strata[max(i.grade for i in items)].append(patient)
    rng = np.random.default_rng(seed)
    val_patients = set()
    for grade in sorted(strata):
        patients = strata[grade]
        rng.shuffle(patients)
        n_val = int(round(len(patients) * val_fraction))
        if len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val_patients.update(patients[:n_val])
    return ([r for r in records if r.patient not in val_patients],
            [r for r in records if r.patient in val_patients])


def _old_assign_folds(records, folds, seed):
    """assign_folds before sources existed."""
    worst = defaultdict(int)
    for r in records:
        worst[r.patient] = max(worst[r.patient], r.grade)
    strata = defaultdict(list)
    for patient in sorted(worst):
        strata[worst[patient]].append(patient)
    rng = np.random.default_rng([seed, folds, 11])
    assignment, offset = {}, 0
    for grade in sorted(strata):
        patients = strata[grade]
        rng.shuffle(patients)
        for i, patient in enumerate(patients):
            assignment[patient] = (offset + i) % folds
        offset += len(patients)
    return assignment


@pytest.mark.parametrize("source", ["", "eyepacs"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_single_source_splits_and_folds_are_the_old_ones(source, seed):
    records = [LabelledImage(r.id, r.path, r.grade, r.patient, source)
               for r in _records(150, sources=("x",), seed=seed)]
    assert split_by_patient(records, 0.2, seed) == _old_split_by_patient(records, 0.2, seed)
    assert assign_folds(records, 5, seed) == _old_assign_folds(records, 5, seed)


def test_folds_and_splits_spread_each_source_and_grade():
    """The stratum is (source, worst grade): each fold holds a fifth of every such stratum
    (+-1), and even a small source reaches a small selection split."""
    records = _records(40, sources=("eyepacs", "m2", "idrid"))
    folds = assign_folds(records, 5, seed=0)
    strata = defaultdict(set)
    for r in records:
        strata[r.source].add(r.patient)
    worst = defaultdict(int)
    for r in records:
        worst[r.patient] = max(worst[r.patient], r.grade)
    for source, patients in strata.items():
        for grade in range(5):
            counts = np.bincount([folds[p] for p in patients if worst[p] == grade], minlength=5)
            assert counts.max() - counts.min() <= 1, (source, grade)
    tiny = [LabelledImage(f"tiny:{p}", Path("x"), 0, f"tiny:{p}", "tiny") for p in range(3)]
    _, selection = split_by_patient(records + tiny, 0.05, seed=1)
    assert {r.source for r in selection} == {"eyepacs", "m2", "idrid", "tiny"}


# ----------------------------------------------------------------------------- the real folders
@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata not beside the checkout")
def test_the_real_folders_read_as_laid_out(capsys):
    counts = {}
    for preset in ("eyepacs", "messidor2", "idrid"):
        records, summary = load_records(DataConfig(preset=preset, root=str(REALDATA / preset)))
        counts[preset] = summary["used"]
        by_id = {r.id: r for r in records}
        if preset == "messidor2":
            assert by_id["IM000012.jpg"].patient == by_id["IM000013.jpg"].patient
            assert sum(r.dme for r in records) == 79
        if preset == "idrid":
            assert np.bincount([r.dme_risk for r in records]).tolist() == [177, 41, 195]
    assert counts == {"eyepacs": 1021, "messidor2": 1042, "idrid": 413}
    assert "skipped" not in capsys.readouterr().out
