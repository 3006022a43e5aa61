"""The SQLite journal: rotations, slices, events, telemetry and micro-benchmark runs.

WAL mode, one transaction per slice, so `kill -9` loses at most the slice in progress.
The schema is versioned (table `meta`, and SQLite's application id "soak"); an older file is
brought up to date on open. `soakd status`, `soakd history` and `soakd report` read it with
no daemon running.

Opening checks the file and says what is wrong in one line (`JournalError` and its kinds):
a file SQLite cannot read or whose pages fail `PRAGMA quick_check` is `JournalCorrupt` (the
daemon moves it aside, `open_for_daemon`); another program's database or a newer schema is
`JournalRefused`; a journal that cannot be written (read-only or full file system, a state
directory that is not a directory) is `JournalUnwritable`, or `JournalLocked` when another
process holds its write lock.

Writes never raise once the journal is open: a row that cannot be written (locked, full, I/O
error) is logged, counted and kept in memory, and written in order when writing works again
(`daemon/journal_writes.py`). Callers need no error handling of their own. Row ids of
rotations, slices and micro-benchmark runs are handed out here, so a caller gets its id even
while the row waits.

Test hook: when the environment variable SOAKD_TEST_DISK_FULL_FILE names a file, every write
fails with SQLite's own "database or disk is full" error while that file exists (tests use it
where they cannot mount a small file system). Nothing else reads it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.journal_schema import (
    APPLICATION_ID,
    SCHEMA,
    SCHEMA_VERSION,
    JournalCorrupt,
    JournalEmpty,
    JournalError,
    JournalLocked,
    JournalRefused,
    JournalUnwritable,
    check_header,
    inspect,
    migrate_v1,
    unwritable,
)
from daemon.journal_writes import (
    CONDITIONS_COLUMNS,
    EVENT_COLUMNS,
    SLICE_COLUMNS,
    TELEMETRY_COLUMNS,
    VERDICT_COLUMNS,
    Op,
    PendingWrites,
    read_spill,
    write_rows,
)
from daemon.log import get_logger
from daemon.records import ConditionsRow, EventRow, SliceRow, TelemetryRow, VerdictRow, json_columns

SLICE_JSON = json_columns(SliceRow)
VERDICT_JSON = json_columns(VerdictRow)
CONDITIONS_JSON = json_columns(ConditionsRow)
TELEMETRY_JSON = json_columns(TelemetryRow)
WRITE_BUSY_TIMEOUT_S = 1.0  # a write waits this long for another process's lock, then is queued
OPEN_BUSY_TIMEOUT_S = 5.0  # at start the journal must be writable within this
FULL_FLAG_ENV = "SOAKD_TEST_DISK_FULL_FILE"
STILL_FAILING_LOG_S = 60.0


@dataclass(frozen=True)
class JournalStats:
    """Write health, read without the journal's lock (for /metrics and /healthz)."""

    errors_total: int  # failed write attempts
    pending_rows: int  # rows held in memory, not yet written
    dropped_rows_total: int  # rows given up (queue full, refused by SQLite, written after close)
    failing: bool
    last_error: str | None


def _finite(value: Any) -> Any:
    """`value` with non-finite floats (anywhere inside) replaced by None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), sort_keys=True, default=str)


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


def _values(row: Any, columns: tuple[str, ...], json_fields: tuple[str, ...]) -> tuple[Any, ...]:
    """A typed row's column values in `columns` order: JSON fields as text, NaN and inf as NULL."""
    values = []
    for column in columns:
        value = getattr(row, column)
        if column in json_fields:
            value = None if value is None else _json(value)
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        values.append(value)
    return tuple(values)


__all__ = ["SCHEMA_VERSION", "Journal", "JournalCorrupt", "JournalEmpty", "JournalError", "JournalLocked",
           "JournalRefused", "JournalStats", "JournalUnwritable", "move_aside", "open_for_daemon"]


class Journal:
    """The journal file at `path`, opened for writing (the daemon) or `readonly` (the CLI).

    Raises a `JournalError` kind on open (see the module docstring); after that, writes never
    raise (read-only: JournalError). Thread-safe.
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._pending = PendingWrites()
        self._log = get_logger()
        flag = os.environ.get(FULL_FLAG_ENV)
        self._full_flag = Path(flag) if flag else None
        self._closed = False
        self._retry_thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._logged_failure_at = 0.0
        self._next_id: dict[str, int] = {}
        self.last_rotation_started_at: float | None = None
        self._db = self._open_readonly() if readonly else self._open_writer()
        self._db.row_factory = sqlite3.Row

    @property
    def spill_path(self) -> Path:
        """Where rows still unwritten at exit go, for the next run to write first."""
        return self.path.with_name(self.path.name + ".pending")

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise JournalError(f"no journal at {self.path}")
        if not self.path.is_file():
            raise JournalRefused(f"{self.path} is not a file")
        check_header(self.path)
        db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                             check_same_thread=False, timeout=OPEN_BUSY_TIMEOUT_S)
        try:
            if inspect(self.path, db, quick_check=False) is None:  # a damaged page shows when read
                raise JournalEmpty(f"journal {self.path} is empty (soakd has not written to it yet)")
        except BaseException:
            db.close()
            raise
        return db

    def _open_writer(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalUnwritable(f"cannot create state directory {self.path.parent}: "
                                    f"{exc.strerror or exc}") from None
        if self.path.exists() and not self.path.is_file():
            raise JournalRefused(f"{self.path} is not a file")
        check_header(self.path)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=OPEN_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise unwritable(self.path, exc) from None
        try:
            version = inspect(self.path, db)
            self._fault()
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.executescript(SCHEMA)
                if version == 1:
                    migrate_v1(db)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                if version != SCHEMA_VERSION:
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                               (str(SCHEMA_VERSION),))
            db.execute(f"PRAGMA busy_timeout={int(WRITE_BUSY_TIMEOUT_S * 1000)}")
            self._load_ids(db)
        except JournalError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise unwritable(self.path, exc) from None
        return db

    def _load_ids(self, db: sqlite3.Connection) -> None:
        for table in ("rotations", "slices", "micro_runs"):
            self._next_id[table] = int(db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]) + 1
        last = db.execute("SELECT MAX(started_at) FROM rotations").fetchone()[0]
        self.last_rotation_started_at = float(last) if last is not None else None

    def _fault(self) -> None:
        """The test hook (module docstring): a write fails as on a full disk while the file exists."""
        if self._full_flag is not None and self._full_flag.exists():
            raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        """Write what is queued (one last try), spill what still cannot be written, close."""
        with self._lock:
            if self._closed:
                return
            if not self.readonly and len(self._pending) and not self._flush():
                rows = len(self._pending)
                try:
                    self._pending.spill(self.spill_path)
                    self._log.warning("journal_rows_spilled", rows=rows, file=str(self.spill_path),
                                      error=self._pending.last_error)
                except OSError as exc:
                    self._log.error("journal_rows_lost", rows=rows, error=str(exc))
            self._closed = True
            self._wake.set()
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def schema_version(self) -> int:
        """The journal's schema version from its `meta` table (0 for a file without one)."""
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    # --- the daemon's start ----------------------------------------------------------------------

    def start_session(self, detail: Mapping[str, Any]) -> int:
        """The daemon's first writes, at once and synchronously: rows a previous run spilled,
        rotations a crash left open marked `interrupted` (their finished slices stay), the
        current-slice state cleared and a `start` event with `detail`. Returns the number of
        interrupted rotations. Raises JournalUnwritable (or JournalLocked)."""
        with self._lock:
            spilled = read_spill(self.spill_path)
            now = time.time()
            try:
                self._fault()
                with self._db as db:
                    refused = write_rows(db, spilled)
                    interrupted = db.execute(
                        "UPDATE rotations SET result='interrupted', ended_at=COALESCE("
                        "(SELECT MAX(ended_at) FROM slices WHERE rotation_id=rotations.id), started_at) "
                        "WHERE result IS NULL").rowcount
                    db.execute("INSERT OR REPLACE INTO state(key, value, updated_at) VALUES ('current', 'null', ?)",
                               (now,))
                    db.execute("INSERT INTO events(time, kind, detail) VALUES (?, 'start', ?)",
                               (now, _json({**detail, "interrupted_rotations": interrupted,
                                            "replayed_rows": len(spilled)})))
                self._load_ids(self._db)
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self._db.rollback()
                raise unwritable(self.path, exc) from None
            if spilled:
                self.spill_path.unlink(missing_ok=True)
                self._log.info("journal_spill_replayed", rows=len(spilled) - len(refused),
                               file=str(self.spill_path))
            for op, why in refused:
                self._log.error("journal_row_refused", op=op.name, error=why)
            return interrupted

    def close_dangling_rotations(self) -> int:
        """Rotations a crash left open are marked `interrupted` (their finished slices stay)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rotations SET result='interrupted', ended_at=COALESCE("
                "(SELECT MAX(ended_at) FROM slices WHERE rotation_id=rotations.id), started_at) "
                "WHERE result IS NULL")
            return cursor.rowcount

    # --- guarded writes --------------------------------------------------------------------------

    def stats(self) -> JournalStats:
        """Write-path health: errors so far, rows waiting to be retried, rows dropped, whether writes
        are failing now and the last error (exported as soakd_journal_* metrics)."""
        pending = self._pending
        return JournalStats(pending.errors_total, len(pending), pending.dropped_total,
                            pending.failing_since is not None, pending.last_error)

    def _write(self, op: Op) -> None:
        """Queue `op` and write the queue unless backing off after a failure. Never raises
        (on a read-only journal: JournalError)."""
        if self.readonly:
            raise JournalError(f"journal {self.path} is open read-only")
        with self._lock:
            if self._closed:
                self._pending.dropped_total += 1
                self._log.error("journal_write_after_close", op=op.name)
                return
            dropped = self._pending.add(op)
            if dropped is not None:
                self._log.warning("journal_row_dropped", op=dropped.name, pending=len(self._pending),
                                  reason="too many rows waiting")
            if self._pending.may_try():
                self._flush()
            else:
                self._ensure_retry()

    def _flush(self) -> bool:
        """Write every queued row in one transaction (caller holds the lock); False on failure."""
        rows = self._pending.rows()
        if not rows:
            return True
        try:
            self._fault()
            with self._db as db:
                refused = write_rows(db, rows)
        except (sqlite3.Error, OSError) as exc:
            with suppress(sqlite3.Error):
                self._db.rollback()
            now = time.monotonic()
            if self._pending.failed(str(exc)) or now - self._logged_failure_at >= STILL_FAILING_LOG_S:
                self._logged_failure_at = now
                self._log.warning("journal_write_failed", error=str(exc), pending=len(self._pending),
                                  errors_total=self._pending.errors_total)
            self._ensure_retry()
            return False
        self._pending.clear()
        failed_for = self._pending.succeeded()
        if failed_for is not None:
            self._log.info("journal_recovered", rows=len(rows), failed_seconds=round(failed_for, 1))
        for op, why in refused:
            self._pending.dropped_total += 1
            self._log.error("journal_row_refused", op=op.name, error=why)
        return True

    def _ensure_retry(self) -> None:
        if self._retry_thread is None or not self._retry_thread.is_alive():
            self._retry_thread = threading.Thread(target=self._retry_loop, name="soakd-journal-retry",
                                                  daemon=True)
            self._retry_thread.start()

    def _retry_loop(self) -> None:
        """Retries the queue on the back-off schedule until it is written or the journal closes."""
        while True:
            with self._lock:
                if self._closed or not len(self._pending):
                    return
                delay = self._pending.retry_at - time.monotonic()
                if delay <= 0:
                    self._flush()
                    continue
            self._wake.wait(delay)

    def _allocate(self, table: str) -> int:
        with self._lock:
            if table not in self._next_id:  # read-only: no ids to hand out
                raise JournalError(f"journal {self.path} is open read-only")
            value = self._next_id[table]
            self._next_id[table] = value + 1
            return value

    # --- writes ----------------------------------------------------------------------------------

    def start_rotation(self, profile: str, trigger: str, backends: str, started_at: float | None = None) -> int:
        """A new rotation row; returns its id (at once, even while the row waits to be written)."""
        at = started_at or time.time()
        with self._lock:
            rotation_id = self._allocate("rotations")
            self.last_rotation_started_at = max(at, self.last_rotation_started_at or at)
            self._write(Op("start_rotation", (rotation_id, at, profile, trigger, backends)))
        return rotation_id

    def end_rotation(self, rotation_id: int, result: str, detail: str = "", ended_at: float | None = None) -> None:
        """Close a rotation row: `result` is completed | stopped | failed | skipped; `ended_at` is
        unix seconds (now when None)."""
        self._write(Op("end_rotation", (ended_at or time.time(), result, detail, rotation_id)))

    def add_slice(self, rotation_id: int, row: SliceRow) -> int:
        """Journal one finished slice (a typed row, daemon/records.py); returns its id."""
        values = _values(row, SLICE_COLUMNS, SLICE_JSON)
        with self._lock:
            slice_id = self._allocate("slices")
            self._write(Op("add_slice", (slice_id, rotation_id, *values)))
        return slice_id

    def add_verdict(self, rotation_id: int, row: VerdictRow) -> None:
        """Journal one series' verdicts for a phase (daemon/records.VerdictRow)."""
        self._write(Op("add_verdict", (rotation_id, *_values(row, VERDICT_COLUMNS, VERDICT_JSON))))

    def add_conditions(self, rotation_id: int, row: ConditionsRow) -> None:
        """Journal the conditions a rotation started under (daemon/records.ConditionsRow)."""
        self._write(Op("add_conditions", (rotation_id, *_values(row, CONDITIONS_COLUMNS, CONDITIONS_JSON))))

    def add_event(self, kind: str, detail: Mapping[str, Any] | str = "", source: str | None = None,
                  rotation_id: int | None = None, at: float | None = None) -> None:
        """Journal one event (`kind`, a JSON or text `detail`, the telemetry `source` it came from);
        `at` is unix seconds (now when None)."""
        text = detail if isinstance(detail, str) else _json(dict(detail))
        row = EventRow(at or time.time(), rotation_id, kind, source, text)
        self._write(Op("add_event", _values(row, EVENT_COLUMNS, ())))

    def add_telemetry(self, row: TelemetryRow) -> None:
        """Journal one telemetry row (daemon/records.TelemetryRow)."""
        self._write(Op("add_telemetry", _values(row, TELEMETRY_COLUMNS, TELEMETRY_JSON)))

    def add_micro_run(self, profile: str, summary: Mapping[str, Any], results: list[Mapping[str, Any]],
                      at: float | None = None) -> int:
        """Journal one micro-benchmark run (its summary and one mapping per result); returns its id."""
        with self._lock:
            run_id = self._allocate("micro_runs")
            self._write(Op("add_micro_run", (run_id, at or time.time(), profile, _json(dict(summary)),
                                             _json(list(results)))))
        return run_id

    def set_state(self, key: str, value: Any) -> None:
        """Keep a JSON value under `key` (survives restarts; e.g. the cached CPU baseline)."""
        self._write(Op("set_state", (key, _json(value), time.time())))

    # --- reads ------------------------------------------------------------------------------

    def get_state(self, key: str) -> tuple[Any, float] | None:
        """The value kept under `key` and the unix time it was written, or None."""
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

    def last_rotation_start(self) -> float | None:
        """Unix time the newest rotation started (rows still queued included), None if never."""
        return self.last_rotation_started_at

    def rotations(self, limit: int = 20, since: float | None = None) -> list[dict[str, Any]]:
        """Rotation rows, newest first, at most `limit`, started at or after `since` (unix seconds)."""
        return self._select("rotations", [("started_at >= ?", since)], "id DESC", limit)

    def rotation(self, rotation_id: int) -> dict[str, Any] | None:
        """One rotation row, or None when there is no such id."""
        rows = self._select("rotations", [("id = ?", rotation_id)], "id")
        return rows[0] if rows else None

    def slices(self, rotation_id: int | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Slice rows (daemon/records.py columns, JSON decoded) in journal order, of one rotation
        and/or started at or after `since` (unix seconds)."""
        return self._select("slices", [("rotation_id = ?", rotation_id), ("started_at >= ?", since)], "id",
                            json_columns=SLICE_JSON)

    def verdicts(self, rotation_id: int | None = None, run_key: str | None = None, profile: str | None = None,
                 limit: int | None = None, until_rotation: int | None = None) -> list[dict[str, Any]]:
        """Verdict rows, newest first, matching the given rotation, run_key and profile, of rotations up
        to `until_rotation` ([] from a journal older than schema version 3, which has no such table)."""
        return self._select_new("verdicts", [("rotation_id = ?", rotation_id), ("run_key = ?", run_key),
                                             ("profile = ?", profile), ("rotation_id <= ?", until_rotation)],
                                "id DESC", limit, VERDICT_JSON)

    def conditions(self, rotation_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Conditions rows, newest first ([] from a journal older than schema version 3)."""
        return self._select_new("conditions", [("rotation_id = ?", rotation_id)], "id DESC", limit,
                                CONDITIONS_JSON)

    def _select_new(self, table: str, conditions: list[tuple[str, Any]], order: str, limit: int | None,
                    json_columns: tuple[str, ...]) -> list[dict[str, Any]]:
        """`_select` on a table added after version 2: a read-only view of an older journal
        (not migrated yet: only the daemon migrates) has none of it."""
        try:
            return self._select(table, conditions, order, limit, json_columns)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def events(self, since: float | None = None, kind: str | None = None, limit: int = 1000,
               rotation_id: int | None = None) -> list[dict[str, Any]]:
        """Event rows, newest first, at most `limit`, filtered by time, kind and rotation."""
        return self._select("events", [("time >= ?", since), ("kind = ?", kind), ("rotation_id = ?", rotation_id)],
                            "id DESC", limit)

    def telemetry(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Telemetry rows between `since` and `until` (unix seconds, inclusive), oldest first."""
        return self._select("telemetry", [("time >= ?", since), ("time <= ?", until)], "time",
                            json_columns=TELEMETRY_JSON)

    def micro_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The last `limit` micro-benchmark runs, newest first, summary and results decoded."""
        return self._select("micro_runs", [], "id DESC", limit, json_columns=("summary", "results"))


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename a corrupt journal (and its -wal/-shm files) to `<name>.corrupt-<UTC time>`; returns
    the new name. Raises OSError when it cannot be renamed."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{target}{suffix}"))
    return target


@dataclass(frozen=True)
class Opened:
    """The daemon's journal, and what was done to open it."""

    journal: Journal
    moved_to: Path | None = None  # where a corrupt journal went
    corrupt_reason: str | None = None


def open_for_daemon(path: Path) -> Opened:
    """Open the journal for writing; a corrupt one is moved aside (`move_aside`) and a new one
    started. Raises JournalRefused, JournalUnwritable or JournalLocked (and JournalUnwritable
    when a corrupt file cannot be moved)."""
    try:
        return Opened(Journal(path))
    except JournalCorrupt as exc:
        try:
            moved = move_aside(path)
        except OSError as error:
            raise JournalUnwritable(f"{exc}, and it cannot be moved aside: {error.strerror or error}") from None
        return Opened(Journal(path), moved, str(exc))
