"""The journal's schema, what a journal file must look like, and the errors of opening one.

`inspect()` tells a soakd journal from an empty file, another program's database, a newer
schema or a corrupt file, each as one line naming the file.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from daemon.records import ConditionsRow, SliceRow, VerdictRow, sql_columns

# Version 2: slices carry their device index and name, run configuration, load gaps and the
# energy of their measured time; the slices table is derived from daemon.records.SliceRow.
# Version 3: the tables `verdicts` (VerdictRow: stability score, slowdowns, history band per
# phase x backend x precision x device) and `conditions` (ConditionsRow: what a rotation started
# under). New tables only: opening a version-2 file creates them (CREATE TABLE IF NOT EXISTS).
SCHEMA_VERSION = 3

# Version 1, as written by soakd 0.1: the columns every soakd journal has (checked on open) and
# what version 2 migrates from.
SCHEMA_V1 = """
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
CREATE TABLE IF NOT EXISTS slices (
    id INTEGER PRIMARY KEY,
    rotation_id INTEGER NOT NULL REFERENCES rotations(id),
    phase TEXT NOT NULL,
    requested_backend TEXT NOT NULL,
    backend TEXT NOT NULL,
    precision TEXT NOT NULL,
    baseline INTEGER NOT NULL DEFAULT 0,
    device TEXT,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    steps INTEGER NOT NULL,
    seconds REAL NOT NULL,
    flop REAL NOT NULL,
    latency_p50 REAL,
    latency_p99 REAL,
    energy_joules TEXT NOT NULL,     -- JSON {component: J} over the slice
    thermal_seconds TEXT NOT NULL,   -- JSON {level: s} over the slice
    peak_rss_bytes INTEGER,
    avg_rss_bytes INTEGER,
    peak_device_bytes INTEGER,
    checks INTEGER NOT NULL DEFAULT 0,
    mismatches INTEGER NOT NULL DEFAULT 0,
    max_relative_error REAL,
    failure_reason TEXT,
    failure_detail TEXT,
    fallback TEXT,                   -- JSON {from, to, reason, detail} when this slice ran after one
    prepare_seconds REAL,
    warmup_seconds REAL,
    info TEXT
);
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


APPLICATION_ID = 0x736F616B  # "soak" in SQLite's header: this file is a soakd journal


class JournalError(Exception):
    """The journal cannot be used; the message is one line naming the file."""


class JournalEmpty(JournalError):
    """An existing but empty file (no soakd data yet), opened read-only."""


class JournalCorrupt(JournalError):
    """Not readable as SQLite, or its pages fail `PRAGMA quick_check`."""


class JournalRefused(JournalError):
    """Another program's database, a newer schema, or not a file: left as it is."""


class JournalUnwritable(JournalError):
    """The journal (or its directory) cannot be written: read-only, full, not a directory."""


class JournalLocked(JournalUnwritable):
    """Another process holds the journal's write lock."""


def row_table(table: str, row_type: type) -> str:
    """The DDL of a table of one rotation's typed rows (daemon/records.py): an id, the rotation
    and one column per field of `row_type`."""
    columns = ",\n    ".join(f"{name} {sql}" for name, sql in sql_columns(row_type))
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n    id INTEGER PRIMARY KEY,\n"
            "    rotation_id INTEGER NOT NULL REFERENCES rotations(id),\n    " + columns + "\n);")


def slices_table() -> str:
    """The current slices table's DDL, from SliceRow's fields."""
    return row_table("slices", SliceRow)


def _current_schema() -> str:
    start = SCHEMA_V1.index("CREATE TABLE IF NOT EXISTS slices (")
    end = SCHEMA_V1.index("CREATE INDEX IF NOT EXISTS slices_rotation")
    return (SCHEMA_V1[:start] + slices_table() + "\n" + SCHEMA_V1[end:] + row_table("verdicts", VerdictRow)
            + "\nCREATE INDEX IF NOT EXISTS verdicts_run ON verdicts(run_key, profile);\n"
            + row_table("conditions", ConditionsRow) + "\n")


SCHEMA = _current_schema()


def migrate_v1(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the new slice columns; `device` held the device's name, now
    `device_name`, and every version-1 slice ran on device "0"."""
    present = {row[1] for row in db.execute("PRAGMA table_info(slices)")}
    for name, sql in sql_columns(SliceRow):
        if name not in present:
            db.execute(f"ALTER TABLE slices ADD COLUMN {name} {sql.replace(' NOT NULL', '')}")
    db.execute("UPDATE slices SET device_name = device, device = '0' WHERE device_name IS NULL")


@functools.cache
def _expected_columns() -> dict[str, frozenset[str]]:
    """Table -> the columns every soakd journal has (version 1's, built in memory)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA_V1)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: frozenset(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        db.close()


def unwritable(path: Path, exc: BaseException) -> JournalUnwritable:
    """The JournalUnwritable (JournalLocked for a lock or busy error) that `exc` means for `path`."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return JournalLocked(f"journal {path} is locked by another process ({text})")
    return JournalUnwritable(f"cannot write journal {path}: {text}")


SQLITE_HEADER = b"SQLite format 3\x00"


def check_header(path: Path) -> None:
    """Raise JournalCorrupt when a non-empty `path` does not start as a SQLite file does: found
    before SQLite opens it, so its -wal and -shm files are left as they are, to be moved aside."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalUnwritable(f"cannot read journal {path}: {exc.strerror or exc}") from None
    if head and head != SQLITE_HEADER:
        raise JournalCorrupt(f"journal {path} is corrupt (file is not a database)")


def inspect(path: Path, db: sqlite3.Connection, quick_check: bool = True) -> int | None:
    """The schema version of the soakd journal open on `db`, or None for an empty file; with
    `quick_check`, its pages are checked too (the daemon at start; it reads every page: 0.1 s
    for an 84 MB journal here, from the page cache).
    Raises JournalCorrupt, JournalRefused, or JournalUnwritable when SQLite cannot open it."""
    try:
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and app_id == 0:
            return None
        if app_id not in (0, APPLICATION_ID):
            raise JournalRefused(f"{path} is not a soakd journal (SQLite application id {app_id:#x})")
        if "meta" not in tables:
            raise JournalRefused(f"{path} is not a soakd journal (tables: {', '.join(sorted(tables))})")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None:
            raise JournalRefused(f"{path} is not a soakd journal (no schema version in its meta table)")
        if version > SCHEMA_VERSION:
            raise JournalRefused(f"{path} has schema version {version}; this soakd reads up to "
                                 f"{SCHEMA_VERSION}: upgrade soakd")
        for table, wanted in _expected_columns().items():
            if table in tables:
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if wanted - have:
                    raise JournalRefused(f"{path} is not a soakd journal (table {table} has no "
                                         f"{', '.join(sorted(wanted - have))})")
        check = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()] if quick_check else ["ok"]
        if check != ["ok"]:
            raise JournalCorrupt(f"journal {path} is corrupt ({'; '.join(check[:2])})")
        return version
    except sqlite3.OperationalError as exc:
        raise unwritable(path, exc) from None
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(f"journal {path} is corrupt ({exc})") from None
