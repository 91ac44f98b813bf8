"""Screening engine: names -> patients, worklist order, end-to-end runs, resume after SIGKILL,
two processes on one database, zips and roots."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from core.errors import ConfigError, PathNotAllowedError
from core.grading import Urgency
from core.manifest import CalibrationSpec
from core.patients import Identity, build_worklist, compile_pattern, parse_identity
from core.screening import screen
from core.store import FileRow, ResultRow, Store
from core.synthetic import write_clinic_folder
from tests.helpers import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- file names


@pytest.mark.parametrize("name, expected", [
    ("10_left.jpeg", Identity("10", "left", 1)),
    ("10_right.jpeg", Identity("10", "right", 1)),
    ("PT1001_OD_2.jpg", Identity("PT1001", "right", 2)),
    ("pt7-os-3.png", Identity("pt7", "left", 3)),
    ("clinic/A12 L.jpg", Identity("A12", "left", 1)),
    ("A12_R_macula.jpg", Identity("A12", "right", 1)),
    ("IMG_0001.jpg", Identity("IMG_0001", "unknown", 1)),
    ("sub/holiday_photo.jpg", Identity("sub/holiday_photo", "unknown", 1)),
])
def test_builtin_name_patterns(name, expected):
    assert parse_identity(name) == expected


def test_user_pattern_wins_and_is_validated():
    rx = compile_pattern(r"(?P<patient>\d{4})-(?P<eye>OD|OS)-(?P<field>\d)")
    assert parse_identity("scan_1234-os-2.jpg", rx) == Identity("1234", "left", 2)
    assert parse_identity("77_left.jpg", rx) == Identity("77", "left", 1)  # falls back
    with pytest.raises(ConfigError, match="named groups"):
        compile_pattern(r"(?P<patient>\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        compile_pattern(r"(?P<patient>")


# ---------------------------------------------------------------- aggregation on hand-made rows


def _file(name, patient, eye, h, error=None, dup=None):
    return FileRow(1, name, h, patient, eye, 1, duplicate_of=dup, error=error)


def _res(f, grade, p_ref, *, conf=0.9, key="m@1#a", referable=None, gradable=True):
    u = Urgency.UNGRADABLE
    if gradable:
        ref = grade >= 2 if referable is None else referable
        u = (Urgency.VISION_THREATENING if grade >= 3 else Urgency.REFERABLE if ref
             else Urgency.MILD if grade == 1 else Urgency.NONE)
    return ResultRow(1, f.file, f.content_hash, f.patient, f.eye, 1, "m", "1", key,
                     grade if gradable else None, None, p_ref if gradable else None, None,
                     (grade >= 2 if referable is None else referable) if gradable else None,
                     grade >= 3 if gradable else None, conf if gradable else None,
                     "good" if gradable else "reject", () if gradable else ("too dark",), int(u))


def test_worklist_order_and_patient_rules():
    f = {n: _file(f"{n}.jpg", p, e, f"h{n}") for n, p, e in [
        ("a_r", "A", "right"), ("a_l", "A", "left"),          # none + ungradable -> ungradable
        ("b_r", "B", "right"), ("b_l", "B", "left"),          # mild + none -> mild
        ("c_r1", "C", "right"), ("c_r2", "C", "right"),       # ungradable field + referable
        ("d_l", "D", "left"), ("d_r", "D", "right"),          # vtDR
        ("e_l", "E", "left"), ("e_r", "E", "right")]}         # referable, higher p than C
    rows = [_res(f["a_r"], 0, 0.05), _res(f["a_l"], 0, 0, gradable=False),
            _res(f["b_r"], 1, 0.2), _res(f["b_l"], 0, 0.1),
            _res(f["c_r1"], 0, 0, gradable=False), _res(f["c_r2"], 2, 0.6),
            _res(f["d_l"], 4, 0.95), _res(f["d_r"], 0, 0.1),
            _res(f["e_l"], 2, 0.8), _res(f["e_r"], 1, 0.3)]
    files = [*f.values(), _file("broken.jpg", "broken", "unknown", "", error="corrupt")]
    wl = build_worklist(files, rows, models=["m@1#a"])
    assert [p.patient for p in wl.patients] == ["D", "E", "C", "A", "broken", "B"]
    by = {p.patient: p for p in wl.patients}
    assert by["A"].urgency == Urgency.UNGRADABLE  # ungradable eye + negative fellow eye
    assert by["C"].urgency == Urgency.REFERABLE  # worst *gradable* field of the right eye
    assert {e.eye: e.urgency for e in by["C"].eyes} == {"right": Urgency.REFERABLE}
    assert by["B"].urgency == Urgency.MILD and by["B"].grade == 1
    assert by["broken"].n_errors == 1
    first = [i.file.file for i in wl.images[:3]]
    assert first == ["d_l.jpg", "e_l.jpg", "c_r2.jpg"]  # vtDR, then referable by p desc
    assert wl.images[-1].file.file == "a_r.jpg"  # none, lowest p(referable)


def test_review_flags_low_confidence_and_disagreement():
    f1, f2 = _file("x.jpg", "X", "left", "h1"), _file("y.jpg", "Y", "left", "h2")
    decided = ("low confidence in the grade (0.40 < 0.60)",)  # stored with the decision
    rows = [dataclasses.replace(_res(f1, 2, 0.7, conf=0.4), review_reasons=decided),
            _res(f2, 1, 0.3), _res(f2, 2, 0.6, key="other@1#b")]
    items = {i.file.file: i for i in build_worklist([f1, f2], rows, ["m@1#a", "other@1#b"],
                                                    review_below=0.6).images}
    assert items["x.jpg"].review_reasons == decided
    assert items["y.jpg"].review_reasons == ("models disagree on referable",)
    assert items["y.jpg"].primary.bundle_key == "m@1#a" and len(items["y.jpg"].others) == 1
    # a caller's own cut-off replaces the decision's
    stricter = {i.file.file: i for i in build_worklist([f1], rows[:1], ["m@1#a"],
                                                       review_below=0.3).images}
    assert stricter["x.jpg"].review_reasons == ()
    looser = build_worklist([f1], [_res(f1, 2, 0.7, conf=0.7)], ["m@1#a"], review_below=0.8)
    assert looser.images[0].review_reasons == ("low confidence in the grade (0.70 < 0.80)",)


def test_needs_review_sorts_above_routine_results():
    f = [_file(f"{n}.jpg", n, "left", f"h{n}") for n in ("a", "b", "c", "d")]
    rows = [_res(f[0], 0, 0.1), _res(f[1], 1, 0.2),
            dataclasses.replace(_res(f[2], 0, 0.05), review_reasons=("photo quality only usable",)),
            _res(f[3], None, None, gradable=False)]
    order = [i.file.file for i in build_worklist(f, rows, ["m@1#a"]).images]
    assert order == ["d.jpg", "c.jpg", "b.jpg", "a.jpg"]  # ungradable > review > mild > none


def test_duplicate_shares_results():
    a = _file("a_left.jpg", "a", "left", "same")
    b = _file("copy.jpg", "copy", "unknown", "same", dup="a_left.jpg")
    wl = build_worklist([a, b], [_res(a, 3, 0.9)], ["m@1#a"])
    assert all(i.urgency == Urgency.VISION_THREATENING for i in wl.images)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinic")
    records = write_clinic_folder(root / "photos", 4, seed=3, size=256)
    bundle = make_tiny_bundle(root, "tiny")
    forced = make_tiny_bundle(root, "forced", calibration=CalibrationSpec(
        referable_threshold=0.0, vision_threatening_threshold=1.01))
    return root, records, bundle, forced


def _expected_files(root: Path) -> set[str]:
    return {p.relative_to(root / "photos").as_posix() for p in (root / "photos").rglob("*")
            if p.is_file()}


def test_end_to_end_structure(clinic, tmp_path):
    root, records, bundle, forced = clinic
    store = Store(tmp_path / "db.sqlite")
    seen = []
    run_id = screen(root / "photos", [bundle, forced], store, workers=0, batch_size=4,
                    progress=lambda d, t, r, e: seen.append((d, t)))
    files = {f.file: f for f in store.files_for_run(run_id)}
    assert set(files) == _expected_files(root)  # every file exactly once, expected.csv too
    assert seen[-1] == (len(files), len(files))
    truth = {r["file"]: r for r in records}
    wl = store.worklist(run_id)
    items = {i.file.file: i for i in wl.images}
    for name, rec in truth.items():
        if rec["grade"] == "error":
            assert files[name].error, name
        elif rec["grade"] == "ungradable":
            assert items[name].urgency == Urgency.UNGRADABLE and items[name].primary.grade is None
        if rec["duplicate_of"]:
            assert files[name].duplicate_of == rec["duplicate_of"]
        if rec["patient"]:
            assert (files[name].patient, files[name].eye) == (rec["patient"], rec["eye"])
    assert files["expected.csv"].error.startswith("Not a supported image type")
    results = store.results_for_run(run_id)
    hashes = {f.content_hash for f in files.values() if f.error is None}
    assert len(results) == 2 * len(hashes)  # one per unique photo and bundle
    assert store.run(run_id).status == "done"
    assert {a.event for a in store.audit_log(run_id=run_id)} >= {"run_started", "run_finished"}


def test_forced_thresholds_give_urgency_order(clinic, tmp_path):
    root, records, _, forced = clinic
    store = Store(tmp_path / "db.sqlite")
    run_id = screen(root / "photos", [forced], store, workers=0)
    wl = store.worklist(run_id)
    urg = [i.urgency for i in wl.images]
    assert urg == sorted(urg, reverse=True)
    gradable = [i for i in wl.images if i.urgency != Urgency.UNGRADABLE]
    assert gradable and all(i.urgency == Urgency.REFERABLE for i in gradable)
    ps = [i.primary.p_referable for i in gradable]
    assert ps == sorted(ps, reverse=True)
    assert wl.images[len(gradable)].urgency == Urgency.UNGRADABLE


def test_an_exception_from_progress_marks_the_run_interrupted(clinic, tmp_path):
    """Streamlit stops a script by raising inside its next call: the page's Stop button."""
    root, _, bundle, _ = clinic
    store = Store(tmp_path / "db.sqlite")

    class ScriptStopped(Exception):
        pass

    def progress(done, *_):
        if done >= 3:
            raise ScriptStopped

    with pytest.raises(ScriptStopped):
        screen(root / "photos", [bundle], store, workers=0, batch_size=1, progress=progress)
    (info,) = store.list_runs()
    assert info.status == "interrupted" and 3 <= info.n_files < len(_expected_files(root))
    assert len(store.results_for_run(info.id)) >= 3  # graded before the stop: kept


def test_stop_and_resume_does_not_regrade(clinic, tmp_path):
    root, _, bundle, _ = clinic
    store = Store(tmp_path / "db.sqlite")
    stop = threading.Event()
    run_id = screen(root / "photos", [bundle], store, workers=0, batch_size=2, stop_event=stop,
                    progress=lambda d, *_: stop.set() if d >= 5 else None)
    assert store.run(run_id).status == "interrupted"
    before = {(r.content_hash, r.created_at) for r in store.results_for_run(run_id)}
    assert 0 < len(store.files_for_run(run_id)) < len(_expected_files(root))
    assert screen(root / "photos", [bundle], store, run_id=run_id, workers=0) == run_id
    after = store.results_for_run(run_id)
    assert before <= {(r.content_hash, r.created_at) for r in after}  # kept, not re-graded
    assert len({r.content_hash for r in after}) == len(after)
    assert {f.file for f in store.files_for_run(run_id)} == _expected_files(root)
    assert store.run(run_id).status == "done"
    with pytest.raises(ConfigError, match="same models"):
        screen(root / "photos", [bundle, bundle], store, run_id=run_id, workers=0)


def test_worker_processes_with_spawn(clinic, tmp_path):
    root, _, bundle, _ = clinic
    store = Store(tmp_path / "db.sqlite")
    run_id = screen(root / "photos", [bundle], store, workers=1, start_method="spawn")
    ref = Store(tmp_path / "ref.sqlite")
    ref_id = screen(root / "photos", [bundle], ref, workers=0)
    got = {r.file: (r.grade, r.quality_level) for r in store.results_for_run(run_id)}
    want = {r.file: (r.grade, r.quality_level) for r in ref.results_for_run(ref_id)}
    assert got == want and got


def test_zip_upload_and_hostile_zips(clinic, tmp_path):
    root, _, bundle, _ = clinic
    photos = sorted((root / "photos").glob("*_left.jpeg"))[:2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in photos:
            zf.write(p, f"day1/{p.name}")
        zf.writestr("__MACOSX/._junk", b"x")
    store = Store(tmp_path / "db.sqlite")
    run_id = screen([("upload.zip", buf.getvalue())], [bundle], store, workers=0)
    assert {f.file for f in store.files_for_run(run_id)} == {f"day1/{p.name}" for p in photos}
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.jpg", photos[0].read_bytes())
    with pytest.raises(PathNotAllowedError, match="unsafe name"):
        screen([("evil.zip", evil.getvalue())], [bundle], store, workers=0)


def test_roots_refuse_outside_and_symlink_escape(clinic, tmp_path):
    root, _, bundle, _ = clinic
    allowed = tmp_path / "allowed"
    (allowed / "day").mkdir(parents=True)
    photo = next((root / "photos").glob("*_left.jpeg"))
    (allowed / "day" / "ok_left.jpeg").write_bytes(photo.read_bytes())
    (allowed / "day" / "escape_right.jpeg").symlink_to(photo)
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(PathNotAllowedError, match="outside the allowed"):
        screen(root / "photos", [bundle], store, roots=[allowed], workers=0)
    run_id = screen("day", [bundle], store, roots=[allowed], workers=0)
    files = {f.file: f for f in store.files_for_run(run_id)}
    assert files["ok_left.jpeg"].error is None
    assert "outside the allowed" in files["escape_right.jpeg"].error


# ---------------------------------------------------------------- processes


def _cli(folder: Path, bundle: Path, db: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "core.screening", str(folder), "--model", str(bundle), "--db",
         str(db), "--workers", "0", "--batch-size", "1", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(clinic, tmp_path):
    root, records, bundle, _ = clinic
    db = tmp_path / "db.sqlite"
    rng = random.Random(7)
    total = len(_expected_files(root))
    kills, cut_short = 0, False
    for _ in range(3):
        target = min(_count(db, "run_files") + rng.randint(1, 4), total - 3)
        proc = _cli(root / "photos", bundle.path, db, *(["--resume", "1"] if kills else []))
        deadline = time.monotonic() + 60
        while _count(db, "run_files") < target and proc.poll() is None:
            assert time.monotonic() < deadline, "screening made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        cut_short = _count(db, "run_files") < total  # the kill landed before the last file
    assert kills >= 2
    store = Store(db)
    if cut_short:  # a fast machine may finish the last attempt before the kill lands
        assert store.run(1).status == "running"  # killed: nobody could mark it
    screen(root / "photos", [bundle], store, run_id=1, workers=0)  # the last resume, in-process
    files = store.files_for_run(1)
    assert sorted(f.file for f in files) == sorted(_expected_files(root))
    results = store.results_for_run(1)
    unique = {f.content_hash for f in files if f.error is None}
    assert sorted(r.content_hash for r in results) == sorted(unique)  # none lost, none twice
    assert store.run(1).status == "done"


@pytest.mark.slow
def test_two_processes_one_database(clinic, tmp_path):
    root, _, bundle, _ = clinic
    db = tmp_path / "db.sqlite"
    procs = [_cli(root / "photos", bundle.path, db, "--out", str(tmp_path / f"w{i}.csv"))
             for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert not any("locked" in o[1] for o in outs)
    store = Store(db)
    expected = _expected_files(root)
    runs = store.list_runs()
    assert len(runs) == 2 and all(r.status == "done" for r in runs)
    for run in runs:
        assert {f.file for f in store.files_for_run(run.id)} == expected
        assert f"Run {run.id} (done)" in "".join(o[0] for o in outs)
    for i in range(2):
        with open(tmp_path / f"w{i}.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
        assert len(rows) == len(expected)
