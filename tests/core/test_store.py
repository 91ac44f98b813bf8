"""Store: schema, append-only tables, idempotent results, concurrent writers."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.store import SCHEMA_VERSION, FileRow, ResultRow, Store, default_db_path

REPO = Path(__file__).resolve().parents[2]


def _rows(run_id: int, n: int, key: str = "m@1#a", prefix: str = "f"):
    files, results = [], []
    for i in range(n):
        f = FileRow(run_id, f"{prefix}{i}_left.jpg", f"{prefix}h{i}", f"{prefix}{i}", "left", 1)
        files.append(f)
        results.append(ResultRow(run_id, f.file, f.content_hash, f.patient, "left", 1, "m", "1",
                                 key, i % 5, (0.2,) * 5, 0.6, 0.4, True, False, 0.2, "good", (),
                                 3))
    return files, results


def test_schema_wal_and_reopen(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run_id = store.create_run("folder", ["m@1#a"], {"pattern": None})
    store.close()
    again = Store(tmp_path / "db.sqlite")  # migrations are not re-applied
    assert again.run(run_id).source == "folder" and again.schema_version() == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    with pytest.raises(ConfigError, match="newer version"):
        Store(tmp_path / "db.sqlite")


def test_results_roundtrip_idempotent_and_counts(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    run_id = store.create_run("x", ["m@1#a"], {})
    files, results = _rows(run_id, 5)
    store.add_batch(files, results)
    store.add_batch(files, results)  # a resume meeting the same photos adds nothing
    got = store.results_for_run(run_id)
    assert [r.grade for r in got] == [0, 1, 2, 3, 4]
    assert got[0].probs == (0.2,) * 5 and got[0].referable is True and got[0].vtdr is False
    assert store.done_hashes(run_id, "m@1#a") == {f"fh{i}" for i in range(5)}
    assert store.done_hashes(run_id, "other") == set()
    assert len(store.seen_files(run_id)) == 5
    info = store.finish_run(run_id)
    assert (info.status, info.n_files, info.n_results, info.n_errors) == ("done", 5, 5, 0)
    with pytest.raises(ConfigError, match="no screening run"):
        store.run(999)


def test_signoffs_and_append_only_audit(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    sid = store.add_signoff(image_hash="abc", image_name="1_left.jpg", model="m", version="1",
                            predicted_grade=2, decision="override", final_grade=1,
                            reason="haemorrhage is an artefact", clinician="JS")
    store.add_signoff(image_hash="def", image_name="2_left.jpg", model="m", version="1",
                      predicted_grade=0, decision="accept", final_grade=0, reason="",
                      clinician="JS", run_id=None)
    got = store.signoffs(image_hash="abc")
    assert [s.id for s in got] == [sid] and got[0].final_grade == 1
    assert got[0].created_at.endswith("+00:00")
    assert len(store.signoffs()) == 2
    for table in ("audit", "signoffs"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store._rows(f"UPDATE {table} SET created_at='x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store._rows(f"DELETE FROM {table}")
    assert [a.event for a in store.audit_log()] == ["signoff", "signoff"]
    with pytest.raises(ConfigError):
        store.add_signoff(image_hash="a", image_name="n", model="m", version="1",
                          predicted_grade=1, decision="maybe", final_grade=1, reason="",
                          clinician="JS")
    with pytest.raises(ConfigError, match="clinician"):
        store.add_signoff(image_hash="a", image_name="n", model="m", version="1",
                          predicted_grade=1, decision="accept", final_grade=1, reason="",
                          clinician=" ")


def test_default_db_path_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_DB_PATH", str(tmp_path / "sub" / "s.db"))
    assert default_db_path() == tmp_path / "sub" / "s.db"
    assert (tmp_path / "sub").is_dir()


def test_threads_share_a_store(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    run_id = store.create_run("x", ["m@1#a"], {})
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                store.add_batch(*_rows(run_id, 1, prefix=f"t{k}_{i}_"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(store.results_for_run(run_id)) == 80


_WRITER = """
import sys
from core.store import Store
from tests.core.test_store import _rows
store = Store(sys.argv[1])
run_id = store.create_run(sys.argv[2], ["m@1#a"], {})
for i in range(150):
    store.add_batch(*_rows(run_id, 2, prefix=f"{sys.argv[2]}_{i}_"))
store.finish_run(run_id)
"""


def test_two_processes_write_at_once(tmp_path):
    db = str(tmp_path / "db.sqlite")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, db, name], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    store = Store(db)
    runs = store.list_runs()
    assert len(runs) == 2 and all(r.n_results == 300 and r.status == "done" for r in runs)


def test_running_runs_report_their_last_activity(tmp_path):
    """A killed process leaves its run 'running': the idle time tells a stalled run apart."""
    store = Store(tmp_path / "db.sqlite")
    run_id = store.create_run("x", ["m@1#a"], {})
    started = store.run(run_id)
    assert started.last_activity == started.created_at
    files, results = _rows(run_id, 3)
    store.add_batch(files, results)
    info = store.run(run_id)
    newest = max(r[0] for r in store._rows(
        "SELECT created_at FROM run_files WHERE run_id=?", (run_id,)))
    assert info.last_activity >= newest >= started.created_at  # audit rows may be a ms later
    assert datetime.fromisoformat(info.last_activity) <= datetime.now(timezone.utc)
    then = datetime.fromisoformat(info.last_activity)
    assert info.idle_minutes(then + timedelta(minutes=30)) == pytest.approx(30)
    done = store.finish_run(run_id)
    assert done.last_activity is None and done.idle_minutes() is None
    time.sleep(0.005)  # timestamps are in ms: make the resumption's strictly later
    store.reopen_run(run_id)  # a resumption counts as activity
    resumed = store.run(run_id).last_activity
    assert resumed > max(newest, done.finished_at), (resumed, newest, done.finished_at)


def test_opening_while_another_connection_writes_a_new_database_waits(tmp_path):
    """Switching a new database to WAL needs its write lock; SQLite answers BUSY at once
    (without the busy handler) when another connection holds it, so two screening processes
    starting together on a fresh database used to die with "database is locked"."""
    db = tmp_path / "db.sqlite"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")  # a rollback-journal database, as a new file is
    other.execute("BEGIN IMMEDIATE")  # holds the write (RESERVED) lock
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, other.execute, args=("COMMIT",))
    release.start()
    try:
        store = Store(db)  # before the fix: OperationalError at PRAGMA journal_mode=WAL
    finally:
        release.join()
        other.close()
    assert store.schema_version() > 0
    assert store._row("PRAGMA journal_mode")[0] == "wal"


def test_dme_migration_keeps_old_rows_not_assessed_and_round_trips(tmp_path):
    """Issue 33: a schema-3 database (before DME) opens, its rows read as not assessed, and a
    DME result is written and read back (p_dme, and the flag as a bool, not 0/1)."""
    from core.store import MIGRATIONS

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for version in range(3):
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    conn.execute("INSERT INTO runs (created_at, source, models, settings, status) "
                 "VALUES ('2026-01-01', 'x', '[]', '{}', 'running')")
    conn.execute("INSERT INTO results (run_id, file, content_hash, patient, eye, field_index, "
                 "model, version, bundle_key, grade, urgency, created_at) "
                 "VALUES (1, 'a_left.jpg', 'ha', 'a', 'left', 1, 'm', '1', 'k', 1, 1, 'now')")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION >= 4
    (old,) = store.results_for_run(1)
    assert (old.grade, old.p_dme, old.dme) == (1, None, None)
    files, results = _rows(1, 3, prefix="g")
    results = [dataclasses.replace(results[0], p_dme=0.71, dme=True),
               dataclasses.replace(results[1], p_dme=0.05, dme=False), results[2]]
    store.add_batch(files, results)
    got = {r.file: r for r in store.results_for_run(1)}
    assert (got["g0_left.jpg"].p_dme, got["g0_left.jpg"].dme) == (0.71, True)
    assert (got["g1_left.jpg"].p_dme, got["g1_left.jpg"].dme) == (0.05, False)
    assert (got["g2_left.jpg"].p_dme, got["g2_left.jpg"].dme) == (None, None)
    assert got["g0_left.jpg"].dme is True  # a bool, as written
