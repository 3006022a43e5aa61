"""`soakd report` never pools or divides figures across profiles or run configurations, and says
which profile each figure is from (issue 10 item 7: `report --since 24h` showed a false
"sustained 0.07" by dividing a heavy slice by a ci one)."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_main
from test_report import _slice, parse_page

from daemon.journal import Journal
from daemon.report import Lane, Workload, add_speedups, choose_pair, lane_stats, select, write_report

NOW = time.time()
CPU = Lane("cpu", "cpu", "fp32")


def _rotation(journal: Journal, profile: str, start: float, rates: list[float], **extra: Any) -> None:
    """A finished rotation of `profile` with one cpu matmul slice per rate (GFLOP/s, 1 s each)."""
    rotation = journal.start_rotation(profile, "schedule", "cpu", started_at=start)
    for i, rate in enumerate(rates):
        journal.add_slice(rotation, _slice("matmul", "cpu", "cpu", start + 2 * i + 1, rate * 1e9, 1.0, 10,
                                           precision="fp32", **extra))
    journal.end_rotation(rotation, "completed", ended_at=start + 2 * len(rates) + 2)


@pytest.fixture
def mixed_profiles(tmp_path: Path) -> Path:
    """A ci rotation (100 then 95 GFLOP/s) and, later, a heavy one (7 then 7 GFLOP/s), within 24 h."""
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        _rotation(journal, "ci", NOW - 7200, [100.0, 95.0])
        _rotation(journal, "heavy", NOW - 3600, [7.0, 7.0])
    return path


def test_figures_are_per_profile(mixed_profiles: Path) -> None:
    with closing(Journal(mixed_profiles, readonly=True)) as journal:
        selection = select(journal, since=NOW - 86400, now=NOW)
    stats = lane_stats(selection.slices)
    ci, heavy = Workload("ci", "matmul"), Workload("heavy", "matmul")
    assert set(stats) == {(ci, CPU), (heavy, CPU)}
    assert stats[(ci, CPU)].sustained_ratio == pytest.approx(0.95)
    assert stats[(heavy, CPU)].sustained_ratio == pytest.approx(1.0)  # not 7/100
    assert stats[(heavy, CPU)].throughput == pytest.approx(7e9)
    assert stats[(ci, CPU)].slices == stats[(heavy, CPU)].slices == 2


def test_report_since_24h_names_each_profile_and_shows_no_false_alarm(
        mixed_profiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_main(["report", "--state-dir", str(mixed_profiles.parent), "--since", "24h",
                             "--out", str(out)], capsys)
    assert code == 0, err
    page = parse_page(out / "index.html")
    text = " ".join(page.text)
    assert "sustained 0.07" not in text and "0.07" not in text
    # every figure says its profile: the cards, the table's blocks
    assert "matmul · profile ci · cpu" in text and "matmul · profile heavy · cpu" in text
    assert "sustained 0.95" in text and "sustained 1.00" in text
    assert "profiles ci, heavy" in text


def _add_run_column(path: Path, runs: dict[int, dict[str, Any]]) -> None:
    """What the integrator's journal will have: a JSON column `run` per slice."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("ALTER TABLE slices ADD COLUMN run TEXT")
        for slice_id, run in runs.items():
            db.execute("UPDATE slices SET run=? WHERE id=?", (json.dumps(run), slice_id))


def test_the_run_key_keeps_run_configurations_apart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        _rotation(journal, "heavy", NOW - 600, [10.0, 30.0, 11.0, 31.0])  # eager, graph, eager, graph
    shapes = {"x": [8, 1024, 512]}
    eager = {"run_key": "e1", "shapes": shapes, "technique": "eager"}
    graph = {"run_key": "g1", "shapes": shapes, "technique": "graph"}
    _add_run_column(path, {1: eager, 2: graph, 3: eager, 4: graph})
    with closing(Journal(path, readonly=True)) as journal:
        selection = select(journal, rotation=1)
    stats = lane_stats(selection.slices)
    workload = Workload("heavy", "matmul", '{"x":[8,1024,512]}')
    eager_lane, graph_lane = Lane("cpu", "cpu", "fp32", run_key="e1"), Lane("cpu", "cpu", "fp32", run_key="g1")
    assert set(stats) == {(workload, eager_lane), (workload, graph_lane)}
    # each configuration against itself, not eager's 11 over graph's 30
    assert stats[(workload, eager_lane)].sustained_ratio == pytest.approx(1.1)
    assert stats[(workload, graph_lane)].sustained_ratio == pytest.approx(31 / 30)
    assert graph_lane.label(show_run=True) == "cpu [g1]"


def test_shapes_from_info_keep_overridden_sizes_apart(tmp_path: Path) -> None:
    """No run column (today's journals): a profile whose sizes were overridden between rotations
    is two workloads when the slices' info records the shapes."""
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        _rotation(journal, "heavy", NOW - 7200, [50.0, 48.0], info={"shapes": {"a": [4, 2048, 2048]}})
        _rotation(journal, "heavy", NOW - 3600, [12.0, 12.0], info={"shapes": {"a": [4, 1024, 1024]}})
    with closing(Journal(path, readonly=True)) as journal:
        selection = select(journal, since=NOW - 86400, now=NOW)
    stats = lane_stats(selection.slices)
    assert sorted(s.sustained_ratio or 0 for s in stats.values()) == pytest.approx([0.96, 1.0])
    assert {w.shapes for w, _ in stats} == {'{"a":[4,2048,2048]}', '{"a":[4,1024,1024]}'}


def test_speedup_is_only_within_a_workload(tmp_path: Path) -> None:
    """A cuda lane of the heavy profile is not sped up against a ci CPU baseline."""
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        ci = journal.start_rotation("ci", "schedule", "cuda", started_at=NOW - 7200)
        journal.add_slice(ci, _slice("matmul", "cpu", "cpu", NOW - 7199, 1e9, 1.0, 1, precision="fp32",
                                     baseline=True))
        journal.end_rotation(ci, "completed", ended_at=NOW - 7190)
        heavy = journal.start_rotation("heavy", "schedule", "cuda", started_at=NOW - 3600)
        journal.add_slice(heavy, _slice("matmul", "cuda", "cuda", NOW - 3599, 500e12, 1.0, 100, precision="fp32"))
        journal.end_rotation(heavy, "completed", ended_at=NOW - 3590)
    with closing(Journal(path, readonly=True)) as journal:
        stats = lane_stats(select(journal, since=NOW - 86400, now=NOW).slices)
    lanes = [lane for _, lane in stats]
    add_speedups(stats, choose_pair(lanes))
    cuda = stats[(Workload("heavy", "matmul"), Lane("cuda", "cuda", "fp32"))]
    assert cuda.speedup == pytest.approx(1.0) and cuda.speedup_reference == cuda.lane  # itself, not 500000×


def test_the_page_shows_the_shapes_only_where_they_tell_workloads_apart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        _rotation(journal, "heavy", NOW - 7200, [50.0, 48.0], info={"shapes": {"a": [4, 2048, 2048]}})
        _rotation(journal, "heavy", NOW - 3600, [12.0, 12.0], info={"shapes": {"a": [4, 1024, 1024]}})
    with closing(Journal(path, readonly=True)) as journal:
        report = write_report(journal, tmp_path / "out", since=NOW - 86400)
    text = " ".join(parse_page(report.index).text)
    assert 'matmul · profile heavy · shapes {"a":[4,2048,2048]}' in text
    assert 'matmul · profile heavy · shapes {"a":[4,1024,1024]}' in text
