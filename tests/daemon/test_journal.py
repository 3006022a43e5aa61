"""The SQLite journal: WAL, versioned schema, per-slice commits, interrupted rotations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.journal import SCHEMA_VERSION, Journal, JournalError
from daemon.records import SliceRow, sql_columns


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
    with pytest.raises(sqlite3.OperationalError):
        reader.add_event("x")  # read-only


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


def test_slices_table_is_the_typed_row(tmp_path: Path) -> None:
    """The journal's slices table is derived from SliceRow: the same columns, in order."""
    Journal(tmp_path / "j.sqlite3").close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as db:
        columns = [(row[1], row[2], bool(row[3])) for row in db.execute("PRAGMA table_info(slices)")]
    expected = [(name, sql.split()[0], sql.endswith("NOT NULL")) for name, sql in sql_columns(SliceRow)]
    assert columns == [("id", "INTEGER", False), ("rotation_id", "INTEGER", True), *expected]


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
    assert journal.schema_version() == SCHEMA_VERSION == 2
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
