"""Rows the journal could not write yet: kept in order, bounded, retried, spilled at exit.

A journal write can fail for reasons outside soakd: another process holds the SQLite write
lock, the disk is full, the file system went read-only. None of that may stop the daemon or
lose a finished slice, so every write goes through `PendingWrites`: the journal queues the
row, tries to write the whole queue in one transaction, and on failure keeps the queue and
retries later (0.5 s, doubling to 10 s). The queue holds at most `limit` rows; past that the
oldest telemetry row goes first, then the oldest event, then the oldest row of any kind, each
counted as dropped. `state` rows (key/value) are kept as the latest value per key.

At exit what is still queued is written to a spill file beside the journal (JSON lines, one
`{"op": ..., "params": [...]}` per row, op names from `OP_SQL` only); the next `soakd run`
writes it into the journal first, in order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.records import ConditionsRow, EventRow, SliceRow, TelemetryRow, VerdictRow, sql_columns

SLICE_COLUMNS: tuple[str, ...] = tuple(name for name, _ in sql_columns(SliceRow))
VERDICT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in sql_columns(VerdictRow))
CONDITIONS_COLUMNS: tuple[str, ...] = tuple(name for name, _ in sql_columns(ConditionsRow))
EVENT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in sql_columns(EventRow))
TELEMETRY_COLUMNS: tuple[str, ...] = tuple(name for name, _ in sql_columns(TelemetryRow))


def _insert(table: str, columns: tuple[str, ...]) -> str:
    """INSERT of one row: its parameters are `columns`, in order."""
    return f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


# The only statements a queued row (or a spill file) can run.
OP_SQL: dict[str, str] = {
    "start_rotation": "INSERT INTO rotations(id, started_at, profile, trigger, backends) VALUES (?, ?, ?, ?, ?)",
    "end_rotation": "UPDATE rotations SET ended_at=?, result=?, detail=? WHERE id=?",
    "add_slice": _insert("slices", ("id", "rotation_id", *SLICE_COLUMNS)),
    "add_verdict": _insert("verdicts", ("rotation_id", *VERDICT_COLUMNS)),
    "add_conditions": _insert("conditions", ("rotation_id", *CONDITIONS_COLUMNS)),
    "add_event": _insert("events", EVENT_COLUMNS),
    "add_telemetry": _insert("telemetry", TELEMETRY_COLUMNS),
    "add_micro_run": "INSERT INTO micro_runs(id, time, profile, summary, results) VALUES (?, ?, ?, ?, ?)",
    "set_state": "INSERT OR REPLACE INTO state(key, value, updated_at) VALUES (?, ?, ?)",
}
# Which rows go first when the queue is full (earlier in this tuple = dropped first).
DROP_ORDER: tuple[str, ...] = ("add_telemetry", "add_event")
DEFAULT_LIMIT = 10_000  # rows; a slice row is ~1-2 KB, so at most ~20 MB held
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


@dataclass(frozen=True)
class Op:
    """One journal row to write: an `OP_SQL` name and its parameters."""

    name: str
    params: tuple[Any, ...]


class PendingWrites:
    """The ordered, bounded queue of rows not yet in the journal, and the failure bookkeeping.

    Not thread-safe on its own: the journal calls it under its lock.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._rows: deque[Op] = deque()
        self._state: dict[str, Op] = {}  # set_state rows: the latest per key
        self.errors_total = 0  # failed write attempts
        self.dropped_total = 0  # rows given up because the queue was full
        self.last_error: str | None = None
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self.retry_at = 0.0
        self._backoff = FIRST_RETRY_S

    def __len__(self) -> int:
        return len(self._rows) + len(self._state)

    def add(self, op: Op) -> Op | None:
        """Queue `op`; returns the row dropped to make room, if one was."""
        if op.name == "set_state":
            self._state[str(op.params[0])] = op
            return None
        self._rows.append(op)
        if len(self) <= self.limit:
            return None
        victim = next((row for name in DROP_ORDER for row in self._rows if row.name == name), self._rows[0])
        self._rows.remove(victim)
        self.dropped_total += 1
        return victim

    def rows(self) -> list[Op]:
        """Everything queued, in write order (state rows last)."""
        return [*self._rows, *self._state.values()]

    def clear(self) -> None:
        """Forget every waiting row (they were written)."""
        self._rows.clear()
        self._state.clear()

    def may_try(self) -> bool:
        """False while backing off after a failure."""
        return self.failing_since is None or self._clock() >= self.retry_at

    def failed(self, error: str) -> bool:
        """Note a failed attempt; True if it is the first of a run of failures."""
        now = self._clock()
        first = self.failing_since is None
        self.errors_total += 1
        self.last_error = error
        if first:
            self.failing_since = now
            self._backoff = FIRST_RETRY_S
        else:
            self._backoff = min(self._backoff * 2, MAX_RETRY_S)
        self.retry_at = now + self._backoff
        return first

    def succeeded(self) -> float | None:
        """Note a successful write; returns how long writing had failed (None if it had not)."""
        if self.failing_since is None:
            return None
        seconds = self._clock() - self.failing_since
        self.failing_since = None
        return seconds

    # --- spill file ---------------------------------------------------------------------------

    def spill(self, path: Path) -> int:
        """Write every queued row to `path` (JSON lines, atomically); returns the row count.
        Raises OSError when the file cannot be written."""
        rows = self.rows()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for op in rows:
                handle.write(json.dumps({"op": op.name, "params": list(op.params)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return len(rows)


def read_spill(path: Path) -> list[Op]:
    """Rows a previous run spilled to `path` ([] when there is none). A line that is not a known
    row (a torn write, an edit) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
            name, params = record["op"], record["params"]
        except (ValueError, KeyError, TypeError):
            continue
        if name in OP_SQL and isinstance(params, list) and OP_SQL[name].count("?") == len(params):
            out.append(Op(name, tuple(params)))
    return out


def write_rows(db: sqlite3.Connection, rows: list[Op]) -> list[tuple[Op, str]]:
    """Execute `rows` in order on `db` (inside the caller's transaction). A row SQLite refuses
    for itself (a constraint) is skipped and returned with the reason; an error of the database
    as a whole (locked, full, read-only, I/O) propagates so the caller rolls back."""
    refused = []
    for op in rows:
        try:
            db.execute(OP_SQL[op.name], op.params)
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            refused.append((op, f"{type(exc).__name__}: {exc}"))
    return refused
