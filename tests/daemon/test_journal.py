"""The SQLite journal: WAL, versioned schema, per-slice commits, interrupted rotations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.journal import SCHEMA_VERSION, Journal, JournalError


def test_wal_schema_and_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.schema_version() == SCHEMA_VERSION
    rid = journal.start_rotation("ci", "signal", "cpu", started_at=100.0)
    journal.add_slice(rid, {"phase": "matmul", "requested_backend": "cuda", "backend": "cpu",
                            "precision": "fp32", "started_at": 100.0, "ended_at": 101.0, "steps": 5,
                            "seconds": 1.0, "flop": 10.0, "energy_joules": {"cpu": 2.5},
                            "fallback": {"from": "cuda", "to": "cpu"}})
    journal.end_rotation(rid, "completed", ended_at=102.0)
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = Journal(tmp_path / "j.sqlite3", readonly=True)
    (row,) = reader.slices(rotation_id=rid)
    assert row["energy_joules"] == {"cpu": 2.5} and row["fallback"] == {"from": "cuda", "to": "cpu"}
    assert reader.rotation(rid)["result"] == "completed"  # type: ignore[index]
    with pytest.raises(JournalError, match="read-only"):
        reader.add_event("x")


def test_dangling_rotation_becomes_interrupted_and_keeps_slices(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    rid = journal.start_rotation("ci", "schedule", "cpu", started_at=10.0)
    journal.add_slice(rid, {"phase": "conv", "requested_backend": "cpu", "backend": "cpu",
                            "precision": "fp32", "started_at": 10.0, "ended_at": 12.0, "steps": 3,
                            "seconds": 2.0, "flop": 1.0})
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
