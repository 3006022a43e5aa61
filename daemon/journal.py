"""The SQLite journal: rotations, slices, events, telemetry and micro-benchmark runs.

WAL mode, one transaction per slice, so `kill -9` loses at most the slice in progress.
The schema is versioned (table `meta`); `migrate()` brings an older file up to date.
`soakd status`, `soakd history` and `soakd report` read it with no daemon running.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon.records import SliceRow, json_columns, sql_columns

SCHEMA_VERSION = 2

# Version 2: slices carry their device index, run configuration and load gaps; the slices
# table is derived from daemon.records.SliceRow.
SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rotations (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    profile TEXT NOT NULL,
    trigger TEXT NOT NULL,
    backends TEXT NOT NULL,
    result TEXT,                -- completed | stopped | failed | skipped; NULL while running
    detail TEXT
);
{slices}
CREATE INDEX IF NOT EXISTS slices_rotation ON slices(rotation_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    rotation_id INTEGER,
    kind TEXT NOT NULL,              -- throttle | source_up | source_down | error | signal | fallback | ...
    source TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS telemetry (
    time REAL NOT NULL,
    rotation_id INTEGER,
    power_watts TEXT NOT NULL,       -- JSON {component: W}
    thermal_pressure TEXT,
    temperatures TEXT NOT NULL       -- JSON {sensor: C}
);
CREATE INDEX IF NOT EXISTS telemetry_time ON telemetry(time);
CREATE TABLE IF NOT EXISTS micro_runs (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    profile TEXT NOT NULL,
    summary TEXT NOT NULL,
    results TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""


def slices_table() -> str:
    """The slices table's DDL, from SliceRow's fields."""
    columns = ",\n    ".join(f"{name} {sql}" for name, sql in sql_columns(SliceRow))
    return ("CREATE TABLE IF NOT EXISTS slices (\n    id INTEGER PRIMARY KEY,\n"
            "    rotation_id INTEGER NOT NULL REFERENCES rotations(id),\n    " + columns + "\n);")


SCHEMA = SCHEMA_TEMPLATE.replace("{slices}", slices_table())
SLICE_JSON = json_columns(SliceRow)


class JournalError(Exception):
    pass


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


class Journal:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise JournalError(f"no journal at {self.path}")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.migrate()
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def migrate(self) -> None:
        with self._tx() as db:
            row = None
            with contextlib.suppress(sqlite3.OperationalError):  # a new file has no meta table yet
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path} has schema version {version}; this soakd reads "
                                   f"up to {SCHEMA_VERSION}: upgrade soakd")
            db.executescript(SCHEMA)
            if version == 1:
                _migrate_v1_slices(db)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    # --- writes -----------------------------------------------------------------------------

    def start_rotation(self, profile: str, trigger: str, backends: str, started_at: float | None = None) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO rotations(started_at, profile, trigger, backends) VALUES (?, ?, ?, ?)",
                (started_at or time.time(), profile, trigger, backends))
            return int(cursor.lastrowid or 0)

    def end_rotation(self, rotation_id: int, result: str, detail: str = "", ended_at: float | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE rotations SET ended_at=?, result=?, detail=? WHERE id=?",
                       (ended_at or time.time(), result, detail, rotation_id))

    def close_dangling_rotations(self) -> int:
        """Rotations a crash left open are marked `interrupted` (their finished slices stay)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rotations SET result='interrupted', ended_at=COALESCE("
                "(SELECT MAX(ended_at) FROM slices WHERE rotation_id=rotations.id), started_at) "
                "WHERE result IS NULL")
            return cursor.rowcount

    def add_slice(self, rotation_id: int, row: SliceRow) -> int:
        """Journal one finished slice (one transaction); its row id."""
        columns = [name for name, _ in sql_columns(SliceRow)]
        values = []
        for column in columns:
            value = getattr(row, column)
            if column in SLICE_JSON:
                value = None if value is None else _json(value)
            values.append(value)
        with self._tx() as db:
            cursor = db.execute(
                f"INSERT INTO slices(rotation_id, {', '.join(columns)}) "
                f"VALUES (?, {', '.join('?' for _ in columns)})", (rotation_id, *values))
            return int(cursor.lastrowid or 0)

    def add_event(self, kind: str, detail: Mapping[str, Any] | str = "", source: str | None = None,
                  rotation_id: int | None = None, at: float | None = None) -> None:
        text = detail if isinstance(detail, str) else _json(dict(detail))
        with self._tx() as db:
            db.execute("INSERT INTO events(time, rotation_id, kind, source, detail) VALUES (?, ?, ?, ?, ?)",
                       (at or time.time(), rotation_id, kind, source, text))

    def add_telemetry(self, at: float, rotation_id: int | None, power_watts: Mapping[str, float],
                      thermal_pressure: str | None, temperatures: Mapping[str, float]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO telemetry(time, rotation_id, power_watts, thermal_pressure, temperatures) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (at, rotation_id, _json(dict(power_watts)), thermal_pressure, _json(dict(temperatures))))

    def add_micro_run(self, profile: str, summary: Mapping[str, Any], results: list[Mapping[str, Any]],
                      at: float | None = None) -> int:
        with self._tx() as db:
            cursor = db.execute("INSERT INTO micro_runs(time, profile, summary, results) VALUES (?, ?, ?, ?)",
                                (at or time.time(), profile, _json(dict(summary)), _json(list(results))))
            return int(cursor.lastrowid or 0)

    def set_state(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO state(key, value, updated_at) VALUES (?, ?, ?)",
                       (key, _json(value), time.time()))

    # --- reads ------------------------------------------------------------------------------

    def get_state(self, key: str) -> tuple[Any, float] | None:
        with self._lock:
            row = self._db.execute("SELECT value, updated_at FROM state WHERE key=?", (key,)).fetchone()
        return (_loads(row["value"]), float(row["updated_at"])) if row else None

    def _select(self, table: str, conditions: list[tuple[str, Any]], order: str, limit: int | None = None,
                json_columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Rows of `table` matching every (SQL condition with one `?`, value) whose value is not
        None, in `order`, with `json_columns` decoded."""
        used = [(sql, value) for sql, value in conditions if value is not None]
        query = f"SELECT * FROM {table}"
        if used:
            query += " WHERE " + " AND ".join(sql for sql, _ in used)
        query += f" ORDER BY {order}" + (" LIMIT ?" if limit is not None else "")
        args = [value for _, value in used] + ([limit] if limit is not None else [])
        with self._lock:
            rows = [dict(r) for r in self._db.execute(query, args).fetchall()]
        for row in rows:
            for column in json_columns:
                row[column] = _loads(row[column])
        return rows

    def rotations(self, limit: int = 20, since: float | None = None) -> list[dict[str, Any]]:
        return self._select("rotations", [("started_at >= ?", since)], "id DESC", limit)

    def rotation(self, rotation_id: int) -> dict[str, Any] | None:
        rows = self._select("rotations", [("id = ?", rotation_id)], "id")
        return rows[0] if rows else None

    def slices(self, rotation_id: int | None = None, since: float | None = None) -> list[dict[str, Any]]:
        return self._select("slices", [("rotation_id = ?", rotation_id), ("started_at >= ?", since)], "id",
                            json_columns=SLICE_JSON)

    def events(self, since: float | None = None, kind: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return self._select("events", [("time >= ?", since), ("kind = ?", kind)], "id DESC", limit)

    def telemetry(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        return self._select("telemetry", [("time >= ?", since), ("time <= ?", until)], "time",
                            json_columns=("power_watts", "temperatures"))

    def micro_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        return self._select("micro_runs", [], "id DESC", limit, json_columns=("summary", "results"))


def _migrate_v1_slices(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the new slice columns; `device` held the device's name, now
    `device_name`, and every version-1 slice ran on device "0"."""
    present = {row[1] for row in db.execute("PRAGMA table_info(slices)")}
    for name, sql in sql_columns(SliceRow):
        if name not in present:
            db.execute(f"ALTER TABLE slices ADD COLUMN {name} {sql.replace(' NOT NULL', '')}")
    db.execute("UPDATE slices SET device_name = device, device = '0' WHERE device_name IS NULL")
