"""The sign-off widget and the Batch page share one Store per database: a render opens no new
connection and takes no write lock."""

from __future__ import annotations

from dashboard.components import batch_run, signoff
from dashboard.components.database import shared_store


def test_signoff_and_batch_pages_share_one_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_DB_PATH", str(tmp_path / "db.sqlite"))
    shared_store.clear()
    try:
        store = batch_run.open_store()
        assert signoff._store() is store
        assert signoff.earlier_signoffs("h") == []  # many renders, one Store
        for _ in range(20):
            signoff.earlier_signoffs("h")
        assert store.open_connections() == 1
    finally:
        shared_store.clear()
