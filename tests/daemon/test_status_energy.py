"""`soakd status` / `soakd history` count whole-system energy with the one function the exporter
and the report use (daemon/energy.py): totals, not totals plus their parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_main

from daemon.commands.status import summarize_rotation
from daemon.journal import Journal
from daemon.records import SliceRow


def slice_row(energy: dict[str, float]) -> SliceRow:
    return SliceRow(phase="matmul", requested_backend="cpu", backend="cpu", precision="fp32",
                    started_at=100.0, ended_at=101.0, steps=5, seconds=1.0, flop=10.0,
                    energy_joules=energy)


def test_status_and_history_count_psys_not_psys_plus_its_parts(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    journal = Journal(state / "journal.sqlite3")
    rid = journal.start_rotation("ci", "signal", "cpu", started_at=100.0)
    journal.add_slice(rid, slice_row({"package": 10.0, "dram": 2.0, "psys": 15.0}))
    journal.add_slice(rid, slice_row({"psys": 0.0, "package": 8.0, "dram": 1.0}))  # psys read 0
    journal.end_rotation(rid, "completed", ended_at=102.0)
    [row] = summarize_rotation(journal, journal.rotation(rid))["results"]  # type: ignore[arg-type]
    journal.close()
    assert row["energy_joules"] == pytest.approx(15.0 + 9.0)  # was 12 + 15 + 9 = 36
    assert row["energy_counted"] == ["dram", "package", "psys"]
    assert row["energy_notes"] == ["psys read 0 J while its parts (dram, package) read 9 J: the parts are counted"]
    code, out, _ = run_main(["history", "--state-dir", str(state)], capsys)
    assert code == 0
    assert "energy 24.0 J (dram + package + psys)" in out
    assert "note: psys read 0 J while its parts" in out


def test_status_names_devices_down_in_a_working_source(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    journal = Journal(state / "journal.sqlite3")
    journal.set_state("sources", {"nvml": {"up": True, "reason": "ok: 2 GPU(s); down: gpu1 (gpu_is_lost: GPU is lost)"},
                                  "rapl": {"up": False, "reason": "unavailable: no powercap tree"}})
    journal.close()
    code, out, _ = run_main(["status", "--state-dir", str(state)], capsys)
    assert code == 0
    assert "sources up: nvml" in out
    assert "devices down: nvml: gpu1 (gpu_is_lost: GPU is lost)" in out
