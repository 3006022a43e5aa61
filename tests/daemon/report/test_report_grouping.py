"""`soakd report` never pools or divides figures across profiles or run configurations, and says
which profile each figure is from (issue 10 item 7: `report --since 24h` showed a false
"sustained 0.07" by dividing a heavy slice by a ci one)."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_main
from test_report import _slice, parse_page

from daemon.journal import Journal
from daemon.report import Lane, Workload, add_speedups, choose_pair, lane_stats, select, write_report
from daemon.report.statistics import lane_of, workload_of
from workloads.protocol import RunConfig

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


def _run(backend: str, technique: str = "eager", phase: str = "matmul", variant: str = "standard",
         shapes: str = "batch=4 n=2048") -> dict[str, Any]:
    """What the journal's run_key and run columns hold (workloads.protocol.RunConfig)."""
    run = RunConfig(phase=phase, backend=backend, device="0", precision="fp32",
                    shapes=f"{shapes} variant={variant}" if phase == "attention" else shapes,
                    technique=technique, variant=variant)
    return {"run_key": run.key, "run": run.to_dict()}


def test_the_run_key_keeps_run_configurations_apart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    eager, graph = _run("cuda"), _run("cuda", technique="cuda_graph")
    with closing(Journal(path)) as journal:
        rotation = journal.start_rotation("heavy", "schedule", "cuda", started_at=NOW - 600)
        for i, (rate, run) in enumerate(((10.0, eager), (30.0, graph), (11.0, eager), (31.0, graph))):
            journal.add_slice(rotation, _slice("matmul", "cuda", "cuda", NOW - 599 + 2 * i, rate * 1e12, 1.0, 10,
                                               precision="fp32", **run))
        journal.end_rotation(rotation, "completed", ended_at=NOW - 590)
    with closing(Journal(path, readonly=True)) as journal:
        selection = select(journal, rotation=1)
    stats = lane_stats(selection.slices)
    workload = Workload("heavy", "matmul", "batch=4 n=2048")
    eager_lane, graph_lane = Lane("cuda", "cuda", "fp32"), Lane("cuda", "cuda", "fp32", run="cuda_graph")
    assert set(stats) == {(workload, eager_lane), (workload, graph_lane)}
    # one run_key per workload x lane
    keys: dict[Any, set[str]] = {}
    for row in selection.slices:
        keys.setdefault((workload_of(row), lane_of(row)), set()).add(row["run_key"])
    assert keys == {(workload, eager_lane): {eager["run_key"]}, (workload, graph_lane): {graph["run_key"]}}
    # each configuration against itself, not eager's 11 over graph's 30
    assert stats[(workload, eager_lane)].sustained_ratio == pytest.approx(1.1)
    assert stats[(workload, graph_lane)].sustained_ratio == pytest.approx(31 / 30)
    labels = {lane.label(show_run=True) for _, lane in stats}
    assert labels == {"cuda", "cuda [cuda_graph]"}  # what differs from the defaults, not a digest


def test_the_ane_layout_is_the_same_workload_as_metal(tmp_path: Path) -> None:
    """The ANE attention variant computes the same function at the same FLOP: Metal and the
    Neural Engine stay side by side, the variant only in the lane."""
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        rotation = journal.start_rotation("heavy", "schedule", "mps,coreml-ane", started_at=NOW - 600)
        journal.add_slice(rotation, _slice("attention", "mps", "mps", NOW - 599, 8e12, 1.0, 10, precision="fp32",
                                           **_run("mps", phase="attention")))
        journal.add_slice(rotation, _slice("attention", "coreml-ane", "coreml-ane", NOW - 597, 4e12, 1.0, 10,
                                           precision="fp32", **_run("coreml-ane", phase="attention", variant="ane")))
        journal.end_rotation(rotation, "completed", ended_at=NOW - 590)
    with closing(Journal(path, readonly=True)) as journal:
        stats = lane_stats(select(journal, rotation=1).slices)
    assert {w for w, _ in stats} == {Workload("heavy", "attention", "batch=4 n=2048")}
    lanes = [lane for _, lane in stats]
    pair = choose_pair(lanes)
    add_speedups(stats, pair)
    assert [lane.backend for lane in pair] == ["mps", "coreml-ane"]
    ane = next(s for (_, lane), s in stats.items() if lane.backend == "coreml-ane")
    assert ane.speedup == pytest.approx(0.5) and ane.lane.run == "ane"


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
