"""The SQLite journal: WAL, versioned schema, per-slice commits, interrupted rotations."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from daemon.journal import (
    SCHEMA_VERSION,
    Journal,
    JournalCorrupt,
    JournalEmpty,
    JournalError,
    JournalLocked,
    JournalRefused,
    open_for_daemon,
)
from daemon.journal_writes import Op, PendingWrites, read_spill
from daemon.records import EventRow, SliceRow, TelemetryRow, sql_columns


def test_wal_schema_and_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.schema_version() == SCHEMA_VERSION
    rid = journal.start_rotation("ci", "signal", "cpu", started_at=100.0)
    journal.add_slice(rid, SliceRow(phase="matmul", requested_backend="cuda", backend="cpu",
                                    precision="fp32", started_at=100.0, ended_at=101.0, steps=5,
                                    seconds=1.0, flop=10.0, energy_joules={"cpu": 2.5},
                                    fallback={"from": "cuda", "to": "cpu"}, run_key="abc",
                                    run={"shapes": "batch=2 n=128", "technique": "eager"}))
    journal.end_rotation(rid, "completed", ended_at=102.0)
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = Journal(tmp_path / "j.sqlite3", readonly=True)
    (row,) = reader.slices(rotation_id=rid)
    assert row["energy_joules"] == {"cpu": 2.5} and row["fallback"] == {"from": "cuda", "to": "cpu"}
    assert row["run_key"] == "abc" and row["run"]["technique"] == "eager" and row["device"] == "0"
    assert reader.rotation(rid)["result"] == "completed"  # type: ignore[index]
    with pytest.raises(JournalError, match="read-only"):
        reader.add_event("x")


def test_dangling_rotation_becomes_interrupted_and_keeps_slices(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    rid = journal.start_rotation("ci", "schedule", "cpu", started_at=10.0)
    journal.add_slice(rid, SliceRow(phase="conv", requested_backend="cpu", backend="cpu",
                                    precision="fp32", started_at=10.0, ended_at=12.0, steps=3,
                                    seconds=2.0, flop=1.0))
    journal.close()  # a crash: the rotation never ended
    again = Journal(tmp_path / "j.sqlite3")
    assert again.close_dangling_rotations() == 1
    rotation = again.rotation(rid)
    assert rotation is not None and rotation["result"] == "interrupted" and rotation["ended_at"] == 12.0
    assert len(again.slices(rotation_id=rid)) == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "j.sqlite3").close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(JournalError, match="upgrade soakd"):
        Journal(tmp_path / "j.sqlite3")


def test_missing_journal_readonly_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal(tmp_path / "none.sqlite3", readonly=True)


def _table_columns(path: Path, table: str) -> list[tuple[str, str, bool]]:
    with sqlite3.connect(path) as db:
        return [(row[1], row[2], bool(row[3])) for row in db.execute(f"PRAGMA table_info({table})")]


def _typed_columns(row_type: type) -> list[tuple[str, str, bool]]:
    return [(name, sql.split()[0], sql.endswith("NOT NULL")) for name, sql in sql_columns(row_type)]


def test_slices_table_is_the_typed_row(tmp_path: Path) -> None:
    """The journal's slices table is derived from SliceRow: the same columns, in order."""
    Journal(tmp_path / "j.sqlite3").close()
    assert _table_columns(tmp_path / "j.sqlite3", "slices") == [
        ("id", "INTEGER", False), ("rotation_id", "INTEGER", True), *_typed_columns(SliceRow)]


@pytest.mark.parametrize(("table", "row_type", "leading"), [
    ("events", EventRow, [("id", "INTEGER", False)]), ("telemetry", TelemetryRow, [])])
def test_event_and_telemetry_tables_are_the_typed_rows(tmp_path: Path, table: str, row_type: type,
                                                       leading: list[tuple[str, str, bool]]) -> None:
    """The version-1 events and telemetry tables have exactly the typed rows' columns (names, types,
    NOT NULL), so a row written from EventRow/TelemetryRow reads back field for field."""
    journal = Journal(tmp_path / "j.sqlite3")
    assert _table_columns(tmp_path / "j.sqlite3", table) == [*leading, *_typed_columns(row_type)]
    journal.add_event("throttle", {"reason": "sw_power_cap"}, source="nvml", rotation_id=None, at=5.0)
    journal.add_telemetry(TelemetryRow(6.0, None, {"gpu0": 690.5}, "nominal", {"nvml/gpu0": 54.0}))
    (event,) = journal.events(kind="throttle")
    assert (event["time"], event["source"], json.loads(event["detail"])) == (5.0, "nvml", {"reason": "sw_power_cap"})
    (row,) = journal.telemetry()
    assert row["power_watts"] == {"gpu0": 690.5} and row["temperatures"] == {"nvml/gpu0": 54.0}
    assert row["thermal_pressure"] == "nominal" and row["time"] == 6.0
    journal.close()


def test_version_1_journal_is_migrated(tmp_path: Path) -> None:
    """A version-1 journal (device held the device's name) opens, gains the new columns, and its
    slices read back with device "0" and the name in device_name."""
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO rotations(id, started_at, profile, trigger, backends) "
                   "VALUES (1, 5.0, 'ci', 's', 'cpu')")
        db.execute("INSERT INTO slices(rotation_id, phase, requested_backend, backend, precision, device, "
                   "started_at, ended_at, steps, seconds, flop, energy_joules, thermal_seconds) "
                   "VALUES (1, 'matmul', 'cpu', 'cpu', 'fp32', 'cpu (x86_64, 2 threads)', 5, 6, 3, 1.0, 9.0, "
                   "'{}', '{}')")
    journal = Journal(path)
    assert journal.schema_version() == SCHEMA_VERSION == 3
    assert journal.verdicts() == [] and journal.conditions() == []  # version 3 added these tables
    (row,) = journal.slices(rotation_id=1)
    assert row["device"] == "0" and row["device_name"] == "cpu (x86_64, 2 threads)"
    assert row["run_key"] is None and row["steps"] == 3


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rotations (id INTEGER PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, profile TEXT NOT NULL,
    trigger TEXT NOT NULL, backends TEXT NOT NULL, result TEXT, detail TEXT);
CREATE TABLE slices (id INTEGER PRIMARY KEY, rotation_id INTEGER NOT NULL REFERENCES rotations(id),
    phase TEXT NOT NULL, requested_backend TEXT NOT NULL, backend TEXT NOT NULL, precision TEXT NOT NULL,
    baseline INTEGER NOT NULL DEFAULT 0, device TEXT, started_at REAL NOT NULL, ended_at REAL NOT NULL,
    steps INTEGER NOT NULL, seconds REAL NOT NULL, flop REAL NOT NULL, latency_p50 REAL, latency_p99 REAL,
    energy_joules TEXT NOT NULL, thermal_seconds TEXT NOT NULL, peak_rss_bytes INTEGER, avg_rss_bytes INTEGER,
    peak_device_bytes INTEGER, checks INTEGER NOT NULL DEFAULT 0, mismatches INTEGER NOT NULL DEFAULT 0,
    max_relative_error REAL, failure_reason TEXT, failure_detail TEXT, fallback TEXT, prepare_seconds REAL,
    warmup_seconds REAL, info TEXT);
"""


# --- guarded writes (issue 19 item 1) -----------------------------------------------------------


def _slice(phase: str, at: float) -> SliceRow:
    return SliceRow(phase=phase, requested_backend="cpu", backend="cpu", precision="fp32",
                    started_at=at, ended_at=at + 1, steps=3, seconds=1.0, flop=1.0,
                    latency_p50=float("nan"), energy_joules={"cpu": float("inf")})


def _lock(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


def test_writes_while_locked_wait_in_memory_and_go_in_order_when_the_lock_ends(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.start_session({"pid": 1})
    lock = _lock(path)
    started = time.monotonic()
    rotation = journal.start_rotation("ci", "signal", "cpu", started_at=10.0)
    for n, phase in enumerate(("matmul", "conv", "attention")):
        journal.add_slice(rotation, _slice(phase, 11.0 + n))
    journal.add_event("signal", {"signal": "SIGUSR1"}, rotation_id=rotation)
    journal.end_rotation(rotation, "completed", ended_at=20.0)
    journal.set_state("current", {"phase": "attention"})
    journal.set_state("current", None)
    assert time.monotonic() - started < 3  # one wait for the lock, then queued without waiting
    stats = journal.stats()
    assert stats.failing and stats.errors_total >= 1 and stats.pending_rows == 7  # 2 state rows -> 1
    assert "locked" in (stats.last_error or "")
    assert rotation == 1 and lock.execute("SELECT COUNT(*) FROM slices").fetchone()[0] == 0
    lock.execute("ROLLBACK")
    deadline = time.monotonic() + 15
    while journal.stats().pending_rows and time.monotonic() < deadline:  # the retry thread writes them
        time.sleep(0.1)
    assert journal.stats().pending_rows == 0 and not journal.stats().failing
    assert [(r["id"], r["phase"]) for r in journal.slices(rotation_id=rotation)] == [
        (1, "matmul"), (2, "conv"), (3, "attention")]
    assert journal.slices(rotation_id=1)[0]["latency_p50"] is None  # NaN is not a number to keep
    assert journal.rotation(rotation)["result"] == "completed"  # type: ignore[index]
    assert journal.get_state("current")[0] is None  # type: ignore[index]
    journal.close()


def test_what_cannot_be_written_at_exit_is_spilled_and_written_first_by_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.start_session({})
    lock = _lock(path)
    rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=5.0)
    journal.add_slice(rotation, _slice("matmul", 6.0))
    journal.end_rotation(rotation, "stopped", ended_at=7.0)
    journal.close()
    lock.execute("ROLLBACK")
    lock.close()
    assert journal.spill_path.exists()
    again = Journal(path)
    assert again.start_session({}) == 0  # the spilled rotation is closed: nothing interrupted
    assert not journal.spill_path.exists()
    assert again.rotation(rotation)["result"] == "stopped"  # type: ignore[index]
    assert [r["phase"] for r in again.slices(rotation_id=rotation)] == ["matmul"]
    kinds = [e["kind"] for e in reversed(again.events())]
    assert kinds == ["start", "start"]
    assert again.start_rotation("ci", "schedule", "cpu") == rotation + 1
    again.close()


def test_the_queue_is_bounded_and_gives_up_telemetry_first() -> None:
    queue = PendingWrites(limit=3)
    queue.add(Op("add_telemetry", (1,)))
    queue.add(Op("add_slice", (2,)))
    queue.add(Op("add_event", (3,)))
    assert queue.add(Op("add_slice", (4,))) == Op("add_telemetry", (1,))
    assert queue.add(Op("add_slice", (5,))) == Op("add_event", (3,))
    assert queue.add(Op("add_slice", (6,))) == Op("add_slice", (2,))
    queue.add(Op("set_state", ("current", "1", 0.0)))
    queue.add(Op("set_state", ("current", "2", 0.0)))
    assert [op.params[0] for op in queue.rows()] == [4, 5, 6, "current"]  # state: the latest per key, last
    assert queue.dropped_total == 3


def test_failures_back_off_and_a_success_ends_them() -> None:
    now = [0.0]
    queue = PendingWrites(clock=lambda: now[0])
    assert queue.may_try()
    assert queue.failed("locked") and not queue.may_try()
    now[0] = 0.6
    assert queue.may_try() and not queue.failed("locked")
    now[0] = 1.2
    assert not queue.may_try()  # 1 s after the second failure
    now[0] = 10.0
    assert queue.succeeded() == 10.0 and queue.may_try() and queue.errors_total == 2


def test_a_spill_file_runs_only_known_statements(tmp_path: Path) -> None:
    spill = tmp_path / "j.pending"
    spill.write_text('{"op": "add_event", "params": [1.0, null, "x", null, ""]}\n'
                     '{"op": "drop_table", "params": ["rotations"]}\n'
                     'torn {"op"\n'
                     '{"op": "add_event", "params": [1.0]}\n', encoding="utf-8")
    assert read_spill(spill) == [Op("add_event", (1.0, None, "x", None, ""))]


# --- opening (issue 19 item 3) ------------------------------------------------------------------


def test_a_garbage_file_is_corrupt_and_moved_aside_with_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not SQLite" * 100)
    (tmp_path / "journal.sqlite3-wal").write_bytes(b"wal")
    with pytest.raises(JournalCorrupt, match="file is not a database"):
        Journal(path)
    with pytest.raises(JournalCorrupt):
        Journal(path, readonly=True)
    opened = open_for_daemon(path)
    assert opened.moved_to is not None and opened.moved_to.read_bytes() == b"this is not SQLite" * 100
    assert opened.moved_to.name.startswith("journal.sqlite3.corrupt-")
    assert Path(f"{opened.moved_to}-wal").read_bytes() == b"wal"
    assert opened.journal.schema_version() == SCHEMA_VERSION
    opened.journal.close()


def test_damaged_pages_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    for n in range(300):
        journal.add_event("x", {"n": n, "pad": "y" * 200})
    journal.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2: 4096 * 4] = b"\xff" * 8192  # two pages in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt):
        Journal(path)


def test_an_empty_file_is_a_new_journal_and_an_empty_one_to_read(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.touch()
    with pytest.raises(JournalEmpty):
        Journal(path, readonly=True)
    journal = Journal(path)
    assert journal.schema_version() == SCHEMA_VERSION
    journal.close()


def test_another_programs_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE rotations (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    before = path.read_bytes()
    with pytest.raises(JournalRefused, match="table rotations has no"):
        Journal(path)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 1234")
    with pytest.raises(JournalRefused, match="application id 0x4d2"):
        Journal(path, readonly=True)


def test_a_journal_that_another_process_locks_at_start_is_journal_locked(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    lock = _lock(path)
    try:
        with pytest.raises(JournalLocked, match="locked by another process"):
            Journal(path)
    finally:
        lock.execute("ROLLBACK")
