"""A Store used for days by a server that runs every rerun on a new thread: its connections
and file handles stay bounded, and reads never wait for (or take) the write lock."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time

import pytest

from core.store import MAX_CONNECTIONS, Store

FD_DIR = "/proc/self/fd"
pytestmark = pytest.mark.skipif(not os.path.isdir(FD_DIR), reason="needs /proc (Linux)")


def _open_files() -> int:
    return len(os.listdir(FD_DIR))


def _user(store: Store, run_id: int, i: int) -> None:
    """What one short-lived page thread does: a few reads and, now and then, a write."""
    store.run(run_id)
    store.list_runs()
    store.signoffs(image_hash=f"h{i % 7}")
    if i % 10 == 0:
        store.add_signoff(image_hash=f"h{i % 7}", image_name="x.jpg", model="m", version="1",
                          predicted_grade=1, decision="accept", final_grade=1, reason="",
                          clinician="JS")


@pytest.mark.timeout(300)
def test_200_threads_leave_open_files_bounded(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    run_id = store.create_run("folder", ["m@1#a"], {})
    gc.collect()
    before = _open_files()
    for wave in range(4):  # 4 x 50 threads alive at once, each gone when its wave ends
        threads = [threading.Thread(target=_user, args=(store, run_id, 50 * wave + i))
                   for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    gc.collect()
    grown = _open_files() - before
    # each SQLite connection holds the database and its WAL open (and the -shm file)
    assert grown <= 3 * MAX_CONNECTIONS, f"{grown} more open files after 200 threads"
    assert store.open_connections() <= MAX_CONNECTIONS
    assert len(store.signoffs()) == 20


@pytest.mark.timeout(120)
def test_reads_take_no_write_lock(tmp_path):
    """While a screening run holds the write lock, the sign-off widget opens the database and
    reads earlier sign-offs without waiting (it used to queue for the lock on every render)."""
    db = tmp_path / "db.sqlite"
    Store(db).add_signoff(image_hash="h", image_name="x.jpg", model="m", version="1",
                          predicted_grade=1, decision="accept", final_grade=1, reason="",
                          clinician="JS")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a batch being committed, for as long as it takes
    got: list = []
    reader = threading.Thread(target=lambda: got.append(len(Store(db).signoffs(image_hash="h"))),
                              daemon=True)
    try:
        start = time.monotonic()
        reader.start()
        reader.join(10)
        waited = time.monotonic() - start
        assert got == [1], f"the read waited for the write lock ({waited:.1f} s and counting)"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reader.join(70)


def test_a_runs_last_activity_reads_the_audit_trail_by_index(tmp_path):
    """The audit trail only grows; reading a running run's activity must not scan all of it."""
    from core.store import Store

    store = Store(tmp_path / "db.sqlite")
    store.create_run("folder", ["m@1"], {})
    with store._use() as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT MAX(created_at) FROM audit WHERE run_id=?", (1,)).fetchall()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "audit_run" in detail and "SCAN audit" not in detail
