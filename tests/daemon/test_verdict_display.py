"""The verdicts as a user reads them: `soakd status`, `soakd history --json` and `soakd report` on a
journal holding verdict and conditions rows (the outlier line of issue 17 among them), and a
journal from before those tables existed."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from cli_helpers import run_main

from daemon.journal import Journal
from daemon.records import ConditionsRow, SliceRow, VerdictRow
from daemon.report import write_report
from daemon.verdict_text import conditions_line, outlier_line, verdict_line

RUN_KEY = "abc123def0"


def verdict(rotation: int, sustained: float, **fields: object) -> VerdictRow:
    values: dict[str, object] = dict(
        phase="matmul", backend="cuda", precision="bf16", device="1", profile="heavy", ended_at=1000.0 + rotation,
        pass_mark=0.97, slowdown_threshold=0.05, run_key=RUN_KEY, loops=[1.0e15, 0.99e15, 0.97e15],
        stability=0.97, passed=True, warm_flop_per_second=0.995e15, sustained_flop_per_second=sustained)
    values.update(fields)
    return VerdictRow(**values)  # type: ignore[arg-type]


def journal_with_history(path: Path) -> None:
    """Seven rotations of one run configuration: six steady ones, then one below its band, on a
    GPU that fell behind its peer and started hot."""
    with closing(Journal(path)) as journal:
        for rotation in range(1, 8):
            rid = journal.start_rotation("heavy", "schedule", "cuda", started_at=1000.0 + rotation * 10)
            journal.add_slice(rid, SliceRow(phase="matmul", requested_backend="cuda", backend="cuda",
                                            precision="bf16", device="1", run_key=RUN_KEY,
                                            started_at=1000.0 + rotation * 10, ended_at=1005.0 + rotation * 10,
                                            steps=100, seconds=5.0, flop=5.0e15))
            last = rotation == 7
            journal.add_conditions(rid, ConditionsRow(
                recorded_at=1000.0 + rotation * 10, cooldown="timeout" if last else "cool",
                cooldown_seconds=600.0 if last else 12.0, on_battery=False, battery_percent=100.0,
                low_power_mode=False, thermal_level="nominal", temperatures={"nvml/gpu1": 71.0 if last else 40.0},
                idle_temperatures={"nvml/gpu1": 38.0}, margin_celsius=5.0, started_hot=last,
                hot_sensors=["nvml/gpu1"] if last else [], other_cpu_ratio=0.02))
            band = dict(history_rotations=6, history_low=0.985e15, history_median=1.0e15, history_high=1.015e15,
                        regression=True, slowdowns=2, unexplained_slowdowns=1, stability=0.85, passed=False,
                        device_relative=0.91, device_outlier=True) if last else {}
            journal.add_verdict(rid, verdict(rotation, 0.9e15 if last else 1.0e15 + rotation * 1e12, **band))
            if last:
                journal.add_event("slowdown", {"phase": "matmul", "backend": "cuda", "precision": "bf16",
                                               "device": "1", "loop": 4, "drop": 0.15, "explained": False,
                                               "explanations": [], "flop_per_second": 0.85e15,
                                               "warm_flop_per_second": 1.0e15}, rotation_id=rid, at=1075.0)
            journal.end_rotation(rid, "completed", ended_at=1009.0 + rotation * 10)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    journal_with_history(tmp_path / "state" / "journal.sqlite3")
    return tmp_path / "state"


def test_status_names_the_outlier_the_regression_the_slowdown_and_the_hot_start(state: Path, capsys) -> None:
    code, out, err = run_main(["status", "--state-dir", str(state)], capsys)
    assert code == 0, err
    assert "rotation 7: heavy (schedule)" in out
    assert ("matmul cuda bf16 device 1: stability 0.850 FAIL (pass mark 0.97, 3 loops); 2 slowdowns (1 unexplained); "
            "sustained 900 TFLOP/s, history band 985 TFLOP/s - 1.01 PFLOP/s (median 1 PFLOP/s, 6 rotations): "
            "REGRESSION") in out
    assert "outlier: matmul cuda bf16 device 1 at 0.910 of the host's median device" in out
    assert ("UNEXPLAINED slowdown: matmul cuda bf16 device 1 loop 5: 15.0% below the warm level "
            "(850 TFLOP/s vs 1 PFLOP/s): nothing in the telemetry changed") in out
    assert ("conditions: on AC, 100% · Low Power Mode off · thermal nominal · other processes 2% CPU · "
            "cool-down timeout after 600 s · STARTED HOT: nvml/gpu1 71 °C (idle 38)") in out


def test_history_json_carries_the_verdicts_of_each_rotation(state: Path, capsys) -> None:
    code, out, _ = run_main(["history", "--state-dir", str(state), "--limit", "2", "--json"], capsys)
    assert code == 0
    newest, older = json.loads(out)
    assert newest["verdicts"][0]["regression"] == 1 and newest["verdicts"][0]["device_outlier"] == 1
    assert newest["conditions"]["started_hot"] == 1 and newest["slowdowns"][0]["loop"] == 4
    assert older["verdicts"][0]["regression"] is None and older["conditions"]["cooldown"] == "cool"


def test_words_for_rows_without_a_score_band_or_peers() -> None:
    row = {"phase": "conv", "backend": "cpu", "precision": "fp32", "device": "0", "loops": [5.0], "stability": None,
           "passed": None, "pass_mark": 0.97, "slowdowns": 0, "unexplained_slowdowns": 0,
           "sustained_flop_per_second": 5.0e9, "history_low": None, "device_outlier": None}
    assert verdict_line(row) == ("conv cpu fp32 device 0: stability - (1 loop: needs two); no slowdown; "
                                 "sustained 5 GFLOP/s (no history band yet)")
    assert outlier_line(row) is None
    assert conditions_line({"on_battery": None, "cooldown": "off", "started_hot": None}) == (
        "power source unknown (no battery) · thermal unknown · no cool-down · "
        "start temperature not judged (no idle temperature)")


def test_the_report_draws_the_band_and_lists_the_verdicts(state: Path, tmp_path: Path) -> None:
    with closing(Journal(state / "journal.sqlite3", readonly=True)) as journal:
        report = write_report(journal, tmp_path / "report", rotation=7)
    assert "history.png" in {p.name for p in report.plots}
    html = report.index.read_text(encoding="utf-8")
    assert '<table class="verdicts">' in html and "OUTLIER" in html and "REGRESSION" in html
    assert "UNEXPLAINED slowdown: matmul cuda bf16 device 1 loop 5" in html
    assert "STARTED HOT: nvml/gpu1 71 °C (idle 38)" in html
    assert '<img src="history.png"' in html


def test_a_journal_from_before_the_verdicts_reads_fine(tmp_path: Path, capsys) -> None:
    """A version-2 journal (no verdicts or conditions table), read by `soakd status` before a new
    daemon migrated it; the daemon's open adds the tables."""
    path = tmp_path / "state" / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        rid = journal.start_rotation("ci", "schedule", "cpu", started_at=100.0)
        journal.end_rotation(rid, "completed", ended_at=101.0)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE verdicts")
        db.execute("DROP TABLE conditions")
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    code, out, err = run_main(["status", "--state-dir", str(path.parent)], capsys)
    assert code == 0, err
    assert "rotation 1: ci (schedule)" in out and "stability" not in out
    with closing(Journal(path)) as journal:  # the daemon opens it: version 3, tables there
        assert journal.schema_version() == 3 and journal.verdicts() == [] and journal.conditions() == []
