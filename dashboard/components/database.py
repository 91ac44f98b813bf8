"""The screening database, one Store per database file for the whole server.

Why shared: every page (Batch screening, sign-offs on Grade and Batch) reads and writes the same
SQLite file; one Store keeps the number of open connections bounded (core.store pools them),
and opening a Store per render would re-check the schema every time.
"""

from __future__ import annotations

import streamlit as st

from core.errors import DRError
from core.store import Store, default_db_path


@st.cache_resource(show_spinner=False)
def shared_store(path: str) -> Store:
    """The server's Store for the database at `path` (a resolved path: one per file)."""
    return Store(path)


def open_store() -> Store | str:
    """The screening database ($DR_DB_PATH), or the reason it cannot be opened."""
    try:
        return shared_store(str(default_db_path().resolve()))
    except (DRError, OSError) as exc:
        return f"The screening database could not be opened ({exc}). Check DR_DB_PATH."
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors: say so instead of a traceback
        return f"The screening database could not be opened ({exc}). Check DR_DB_PATH."
