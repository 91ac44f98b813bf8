"""SQLite persistence of screening runs, results, sign-offs and the audit trail.

Why SQLite: one file a clinic can back up, safe for several processes (WAL + busy timeout) and
for crash-resume (every result is committed as it is produced). Writes use BEGIN IMMEDIATE so two
writers queue on the busy timeout instead of failing with "database is locked". Sign-offs and the
audit trail are append-only, enforced by triggers in the database itself, not by convention.
Nothing here logs file names or patient identifiers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core import patients
from core.errors import ConfigError
from core.records import RunKind, RunSettings
from core.rows import FileRow, ResultRow
from core.settings import current as current_settings

DEFAULT_DB = Path(__file__).resolve().parents[1] / "data" / "screening.db"
BUSY_TIMEOUT_MS = 60_000
MAX_CONNECTIONS = 4  # per Store: a server runs for days, on a new thread for every rerun
RUN_STATUSES = ("running", "done", "interrupted")
DECISIONS = ("accept", "override")


def utc_now() -> str:
    """UTC ISO-8601 with milliseconds: sorts as text, unambiguous across sites."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_db_path() -> Path:
    """$DR_DB_PATH or <repo>/data/screening.db; the parent folder is created."""
    path = Path(current_settings().db_path or DEFAULT_DB)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class RunInfo:
    """One screening run: what was screened, with which models, and how far it got."""

    id: int
    created_at: str
    finished_at: str | None
    source: str
    models: tuple[str, ...]  # bundle keys, primary first
    settings: dict[str, Any]
    status: str
    n_files: int
    n_results: int
    n_errors: int
    last_activity: str | None = None  # running runs: when the newest photo was stored

    @property
    def run_settings(self) -> RunSettings:
        """`settings` typed (kind, pattern, per-bundle settings); what the pages should read."""
        return RunSettings.from_json(self.settings, self.source)

    @property
    def kind(self) -> RunKind:
        return self.run_settings.kind

    def idle_minutes(self, now: datetime | None = None) -> float | None:
        """Minutes since a running run last stored a photo; a stopped process stays 'running'."""
        if self.status != "running" or not self.last_activity:
            return None
        then = datetime.fromisoformat(self.last_activity)
        return max(0.0, ((now or datetime.now(timezone.utc)) - then).total_seconds() / 60)


@dataclass(frozen=True)
class SignOff:
    """A clinician's decision on one photo's result (append-only; a change is a new row)."""

    id: int
    created_at: str
    image_hash: str
    image_name: str
    model: str
    version: str
    predicted_grade: int | None
    decision: str
    final_grade: int | None
    reason: str
    clinician: str
    run_id: int | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    created_at: str
    event: str
    run_id: int | None
    details: dict[str, Any]


# ---------------------------------------------------------------- schema

_APPEND_ONLY = """CREATE TRIGGER {t}_no_{op} BEFORE {OP} ON {t}
BEGIN SELECT RAISE(ABORT, '{t} is append-only: add a new entry instead'); END"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the initial schema
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, finished_at TEXT,
            source TEXT NOT NULL, models TEXT NOT NULL, settings TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'done', 'interrupted')),
            n_files INTEGER NOT NULL DEFAULT 0, n_results INTEGER NOT NULL DEFAULT 0,
            n_errors INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE run_files (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            file TEXT NOT NULL, content_hash TEXT NOT NULL, patient TEXT NOT NULL,
            eye TEXT NOT NULL, field_index INTEGER NOT NULL, duplicate_of TEXT, error TEXT,
            created_at TEXT NOT NULL, PRIMARY KEY (run_id, file))""",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            file TEXT NOT NULL, content_hash TEXT NOT NULL, patient TEXT NOT NULL,
            eye TEXT NOT NULL, field_index INTEGER NOT NULL, model TEXT NOT NULL,
            version TEXT NOT NULL, bundle_key TEXT NOT NULL, grade INTEGER, probs TEXT,
            p_referable REAL, p_vision_threatening REAL, referable INTEGER, vtdr INTEGER,
            confidence REAL, quality_level TEXT, quality_reasons TEXT NOT NULL DEFAULT '[]',
            urgency INTEGER NOT NULL, error TEXT, created_at TEXT NOT NULL,
            UNIQUE (content_hash, bundle_key, run_id))""",
        "CREATE INDEX results_run ON results(run_id)",
        """CREATE TABLE thumbnails (
            content_hash TEXT PRIMARY KEY, jpeg BLOB NOT NULL)""",
        """CREATE TABLE signoffs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL,
            image_hash TEXT NOT NULL, image_name TEXT NOT NULL, model TEXT NOT NULL,
            version TEXT NOT NULL, predicted_grade INTEGER,
            decision TEXT NOT NULL CHECK (decision IN ('accept', 'override')),
            final_grade INTEGER, reason TEXT NOT NULL, clinician TEXT NOT NULL,
            run_id INTEGER REFERENCES runs(id))""",
        "CREATE INDEX signoffs_hash ON signoffs(image_hash)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, event TEXT NOT NULL,
            run_id INTEGER, details TEXT NOT NULL)""",
        *(_APPEND_ONLY.format(t=t, op=op.lower(), OP=op)
          for t in ("audit", "signoffs") for op in ("UPDATE", "DELETE")),
    ),
    (  # 2: why a result needs human review (issue 12), decided with the grade
        "ALTER TABLE results ADD COLUMN review_reasons TEXT NOT NULL DEFAULT '[]'",
    ),
    (  # 3: a running run's last activity reads the audit trail by run: without this index
       # that read scanned the whole trail, which only ever grows (soak benchmark)
        "CREATE INDEX audit_run ON audit(run_id, created_at)",
    ),
    (  # 4: a bundle's DME output (issue 33); NULL = not assessed, as every older row was
        "ALTER TABLE results ADD COLUMN p_dme REAL",
        "ALTER TABLE results ADD COLUMN dme INTEGER",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------- the store


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out another connection's write lock.

    Switching needs the write lock while this statement holds a read lock, so SQLite answers
    BUSY at once instead of calling the busy handler (it would deadlock). Two processes
    opening one new database together hit exactly that; retry within BUSY_TIMEOUT_MS.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


class Store:
    """The screening database; safe across threads and processes.

    Connections come from a small pool (at most MAX_CONNECTIONS, however many threads use the
    Store): a thread borrows one per call and gives it back, so Streamlit's thread per rerun
    leaves nothing open behind it. A thread that already holds one (a call inside a call)
    reuses it. Reads take no write lock.
    """

    def __init__(self, path: str | os.PathLike, max_connections: int = MAX_CONNECTIONS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._held = threading.local()  # the connection this thread is using, while it is
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._max = max(1, max_connections)
        self._free = threading.Condition()
        self._migrate()

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for one call (re-entrant within a thread)."""
        conn = getattr(self._held, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._free:
            while not self._idle and self._open >= self._max:
                self._free.wait()
            if self._idle:
                conn = self._idle.pop()
            else:
                self._open += 1
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._free:
                    self._open -= 1
                    self._free.notify()
                raise
        self._held.conn = conn
        try:
            yield conn
        finally:
            self._held.conn = None
            if conn.in_transaction:  # never hand on a connection inside a transaction
                conn.execute("ROLLBACK")
            with self._free:
                self._idle.append(conn)
                self._free.notify()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one read (no transaction, no write lock) and fetch every row."""
        with self._use() as conn:
            return conn.execute(sql, args).fetchall()

    def _row(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._use() as conn:
            return conn.execute(sql, args).fetchone()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front (no deadlock)."""
        with self._use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def open_connections(self) -> int:
        """How many connections this Store has open (bounded by max_connections)."""
        with self._free:
            return self._open

    def close(self) -> None:
        """Close the idle connections (a later call opens new ones as needed)."""
        with self._free:
            for conn in self._idle:
                conn.close()
            self._open -= len(self._idle)
            self._idle.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Takes the write lock only when there is something to migrate (or to refuse)."""
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self._write() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer version (schema {current} > "
                    f"{SCHEMA_VERSION}). Update the software or point DR_DB_PATH elsewhere.")
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")

    def schema_version(self) -> int:
        return int(self._row("PRAGMA user_version")[0])

    # -- runs -----------------------------------------------------------------------------
    def create_run(self, source: str, models: Sequence[str], settings: dict[str, Any]) -> int:
        now = utc_now()  # the run and its "run_started" entry share one timestamp
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs (created_at, source, models, settings, status) "
                "VALUES (?, ?, ?, ?, 'running')",
                (now, source, json.dumps(list(models)), json.dumps(settings, default=str)))
            run_id = int(cur.lastrowid)
            self._audit(conn, "run_started", run_id, {"models": list(models)}, at=now)
        return run_id

    def reopen_run(self, run_id: int) -> RunInfo:
        """Mark a run as running again (resume); returns it as it was stored."""
        info = self.run(run_id)
        with self._write() as conn:
            conn.execute("UPDATE runs SET status='running', finished_at=NULL WHERE id=?",
                         (run_id,))
            self._audit(conn, "run_resumed", run_id, {"previous_status": info.status})
        return info

    def finish_run(self, run_id: int, status: str = "done") -> RunInfo:
        """Close a run ('done' or 'interrupted') and store its counts."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._write() as conn:
            counts = self._counts(conn, run_id)
            conn.execute("UPDATE runs SET status=?, finished_at=?, n_files=?, n_results=?, "
                         "n_errors=? WHERE id=?", (status, utc_now(), *counts, run_id))
            self._audit(conn, "run_finished", run_id, {"status": status, "files": counts[0],
                                                       "results": counts[1], "errors": counts[2]})
        return self.run(run_id)

    @staticmethod
    def _counts(conn: sqlite3.Connection, run_id: int) -> tuple[int, int, int]:
        n_files = conn.execute("SELECT COUNT(*) FROM run_files WHERE run_id=?",
                               (run_id,)).fetchone()[0]
        n_results = conn.execute("SELECT COUNT(*) FROM results WHERE run_id=?",
                                 (run_id,)).fetchone()[0]
        n_errors = conn.execute("SELECT COUNT(*) FROM run_files WHERE run_id=? AND error IS NOT "
                                "NULL", (run_id,)).fetchone()[0]
        return int(n_files), int(n_results), int(n_errors)

    def run(self, run_id: int) -> RunInfo:
        row = self._row("SELECT * FROM runs WHERE id=?", (run_id,))
        if row is None:
            raise ConfigError(f"There is no screening run {run_id} in {self.path}. "
                              "List the runs (Store.list_runs) and pick an existing id.")
        return self._run_info(row)

    def list_runs(self) -> list[RunInfo]:
        with self._use():  # one connection for the list and each running run's counts
            return [self._run_info(r) for r in self._rows("SELECT * FROM runs ORDER BY id DESC")]

    def _run_info(self, row: sqlite3.Row) -> RunInfo:
        counts = (row["n_files"], row["n_results"], row["n_errors"])
        last = None
        if row["status"] == "running":  # live counts while it runs
            with self._use() as conn:
                counts = self._counts(conn, row["id"])
                last = conn.execute(  # newest stored photo, or the run's start / resumption
                    "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM run_files WHERE "
                    "run_id=?1 UNION ALL SELECT MAX(created_at) FROM audit WHERE run_id=?1 "
                    "UNION ALL SELECT created_at FROM runs WHERE id=?1)",
                    (row["id"],)).fetchone()[0]
        return RunInfo(row["id"], row["created_at"], row["finished_at"], row["source"],
                       tuple(json.loads(row["models"])), json.loads(row["settings"]),
                       row["status"], *counts, last_activity=last)

    # -- results --------------------------------------------------------------------------
    def add_batch(self, files: Iterable[FileRow], results: Iterable[ResultRow]) -> None:
        """Commit files and their results together, so a crash never leaves half a photo.

        INSERT OR IGNORE: a resumed run that meets a done photo again adds nothing.
        """
        now = utc_now()
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO run_files (run_id, file, content_hash, patient, eye, "
                "field_index, duplicate_of, error, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [(f.run_id, f.file, f.content_hash, f.patient, f.eye, f.field_index,
                  f.duplicate_of, f.error, now) for f in files])
            conn.executemany(
                f"INSERT OR IGNORE INTO results ({', '.join(_RESULT_COLS)}) "
                f"VALUES ({', '.join('?' * len(_RESULT_COLS))})",
                [_result_params(r, now) for r in results])

    def put_thumbnails(self, thumbs: dict[str, bytes]) -> None:
        if not thumbs:
            return
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO thumbnails VALUES (?, ?)", thumbs.items())

    def thumbnail(self, content_hash: str) -> bytes | None:
        row = self._row("SELECT jpeg FROM thumbnails WHERE content_hash=?", (content_hash,))
        return None if row is None else bytes(row[0])

    def done_hashes(self, run_id: int, bundle_key: str) -> set[str]:
        rows = self._rows("SELECT content_hash FROM results WHERE run_id=? AND bundle_key=?",
                          (run_id, bundle_key))
        return {r[0] for r in rows}

    def seen_files(self, run_id: int) -> dict[str, str]:
        """file -> content hash of every file a run has already recorded."""
        rows = self._rows("SELECT file, content_hash FROM run_files WHERE run_id=?", (run_id,))
        return {r[0]: r[1] for r in rows}

    def files_for_run(self, run_id: int) -> list[FileRow]:
        rows = self._rows(
            "SELECT run_id, file, content_hash, patient, eye, field_index, duplicate_of, error "
            "FROM run_files WHERE run_id=? ORDER BY file", (run_id,))
        return [FileRow(*r) for r in rows]

    def results_for_run(self, run_id: int) -> list[ResultRow]:
        rows = self._rows(
            f"SELECT {', '.join(_RESULT_COLS)} FROM results WHERE run_id=? ORDER BY id", (run_id,))
        return [_result_from_row(r) for r in rows]

    def worklist(self, run_id: int, *, review_below: float | None = None) -> Any:
        """The run's urgency-sorted worklist (core.patients.Worklist)."""
        threshold = patients.REVIEW_CONFIDENCE if review_below is None else review_below
        info = self.run(run_id)
        return patients.build_worklist(self.files_for_run(run_id), self.results_for_run(run_id),
                                       models=info.models, review_below=threshold)

    # -- sign-offs ------------------------------------------------------------------------
    def add_signoff(self, *, image_hash: str, image_name: str, model: str, version: str,
                    predicted_grade: int | None, decision: str, final_grade: int | None,
                    reason: str, clinician: str, run_id: int | None = None) -> int:
        """Record a clinician's accept/override; returns the sign-off id."""
        if decision not in DECISIONS:
            raise ConfigError(f"Sign-off decision must be one of {DECISIONS}, got {decision!r}.")
        if decision == "override" and final_grade is None and not reason.strip():
            raise ConfigError("An override needs a final grade or a reason; fill one in.")
        if not clinician.strip():
            raise ConfigError("A sign-off needs the clinician's name or initials.")
        for g in (predicted_grade, final_grade):
            if g is not None and not 0 <= int(g) <= 4:
                raise ConfigError(f"Grades are ICDR 0-4; got {g}.")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO signoffs (created_at, image_hash, image_name, model, version, "
                "predicted_grade, decision, final_grade, reason, clinician, run_id) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (utc_now(), image_hash, image_name, model, version, predicted_grade, decision,
                 final_grade, reason, clinician, run_id))
            signoff_id = int(cur.lastrowid)
            self._audit(conn, "signoff", run_id, {"signoff_id": signoff_id,
                                                  "image_hash": image_hash, "decision": decision})
        return signoff_id

    def signoffs(self, *, image_hash: str | None = None,
                 run_id: int | None = None) -> list[SignOff]:
        sql, args = "SELECT * FROM signoffs WHERE 1=1", []
        if image_hash is not None:
            sql, args = sql + " AND image_hash=?", [*args, image_hash]
        if run_id is not None:
            sql, args = sql + " AND run_id=?", [*args, run_id]
        rows = self._rows(sql + " ORDER BY id", args)
        names = [f.name for f in fields(SignOff)]
        return [SignOff(**{n: r[n] for n in names}) for r in rows]

    # -- audit ----------------------------------------------------------------------------
    def audit(self, event: str, *, run_id: int | None = None,
              details: dict[str, Any] | None = None) -> None:
        """Append an audit entry (exports, views...). Keep patient identifiers out of details."""
        with self._write() as conn:
            self._audit(conn, event, run_id, details or {})

    @staticmethod
    def _audit(conn: sqlite3.Connection, event: str, run_id: int | None,
               details: dict[str, Any], at: str | None = None) -> None:
        conn.execute("INSERT INTO audit (created_at, event, run_id, details) VALUES (?,?,?,?)",
                     (at or utc_now(), event, run_id, json.dumps(details, default=str)))

    def audit_log(self, *, run_id: int | None = None) -> list[AuditEntry]:
        sql, args = "SELECT * FROM audit", ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id=?", (run_id,)
        rows = self._rows(sql + " ORDER BY id", args)
        return [AuditEntry(r["id"], r["created_at"], r["event"], r["run_id"],
                           json.loads(r["details"])) for r in rows]


_RESULT_COLS = tuple(f.name for f in fields(ResultRow))


def _result_params(r: ResultRow, now: str) -> tuple:
    values = []
    for name in _RESULT_COLS:
        v = getattr(r, name)
        if name in ("probs", "quality_reasons", "review_reasons"):
            v = None if v is None else json.dumps(list(v))
        elif name in ("referable", "vtdr", "dme") and v is not None:
            v = int(bool(v))
        elif name == "created_at":
            v = v or now
        values.append(v)
    return tuple(values)


def _result_from_row(row: sqlite3.Row) -> ResultRow:
    data = {n: row[n] for n in _RESULT_COLS}
    data["probs"] = None if data["probs"] is None else tuple(json.loads(data["probs"]))
    data["quality_reasons"] = tuple(json.loads(data["quality_reasons"] or "[]"))
    data["review_reasons"] = tuple(json.loads(data["review_reasons"] or "[]"))
    for flag in ("referable", "vtdr", "dme"):
        data[flag] = None if data[flag] is None else bool(data[flag])
    return ResultRow(**data)
