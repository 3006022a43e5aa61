"""The real `soakd run` process: scrape, promtool, signals, crash safety, second instance."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_process import REPO, Daemon, sample_value, write_config

pytestmark = pytest.mark.slow
PROMTOOL = shutil.which("promtool")


def slices(state_dir: Path) -> list[tuple[int, str, int]]:
    with sqlite3.connect(state_dir / "journal.sqlite3") as db:
        return list(db.execute("SELECT id, phase, steps FROM slices ORDER BY id"))


@pytest.fixture
def daemon(tmp_path: Path):
    config = write_config(tmp_path / "soakd.toml")
    process = Daemon(tmp_path / "state", config)
    process.wait_ready()
    yield process
    process.stop()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_scrape_passes_promtool_and_shows_a_rotation(daemon: Daemon) -> None:
    daemon.wait_for("soakd_rotations_total", 1, result="completed")
    text = daemon.scrape()
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                           check=False)
    assert check.stdout == "" and check.stderr == "", check.stdout + check.stderr
    assert check.returncode == 0
    for phase in ("matmul", "conv", "attention"):
        assert sample_value(text, "soakd_steps_total", phase=phase, backend="cpu") > 0
        assert sample_value(text, "soakd_flop_total", phase=phase) > 0
        assert sample_value(text, "soakd_step_duration_seconds_count", phase=phase) > 0
        # seconds-long phases never hold two disjoint minutes, and the phase is over: no ratio
        assert "soakd_sustained_ratio{" not in text
        assert "soakd_throughput_flop_per_second{" not in text  # no slice runs now
        assert sample_value(text, "soakd_flop_per_joule", phase=phase) > 0
    assert sample_value(text, "soakd_numeric_mismatches_total") == 0
    assert sample_value(text, "soakd_energy_joules_total", source="replay", component="combined") > 0
    assert sample_value(text, "soakd_thermal_pressure", level="nominal") == 1
    assert sample_value(text, "soakd_source_up", source="replay") == 1
    assert sample_value(text, "soakd_source_up", source="memory") == 1
    assert 'soakd_info{' in text


def test_sigusr1_runs_another_rotation_and_sighup_with_broken_config_keeps_running(daemon: Daemon) -> None:
    first = daemon.wait_for("soakd_rotations_total", 1, result="completed")
    daemon.signal(signal.SIGUSR1)
    daemon.wait_for("soakd_rotations_total", first + 1, result="completed")
    daemon.config.write_text("[schedule]\ninterval_minutes = -5\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    time.sleep(2)
    assert daemon.process.poll() is None
    assert daemon.scrape()  # still serving
    assert "config_rejected" in daemon.output()
    assert "interval_minutes" in daemon.output()


def test_sigterm_mid_phase_exits_zero_within_ten_seconds_with_finished_slices(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", phase_seconds=60)  # a long phase to stop in
    process = Daemon(tmp_path / "state", config)
    process.wait_ready()
    process.wait_for("soakd_steps_total", 1)
    time.sleep(2.5)  # at least one 1-s slice has finished
    process.assert_stops_cleanly(within=10)
    rows = slices(tmp_path / "state")
    assert rows and all(steps > 0 for _, _, steps in rows[:-1])
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        result = db.execute("SELECT result FROM rotations ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert result == "stopped"


def test_kill_9_mid_slice_keeps_earlier_slices_and_restart_continues(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", phase_seconds=60)
    state = tmp_path / "state"
    process = Daemon(state, config)
    process.wait_ready()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(slices(state)) < 2:
        time.sleep(0.3)
    before = slices(state)
    assert len(before) >= 2, process.output()
    process.process.kill()
    process.wait(10)
    restarted = Daemon(state, config)
    try:
        restarted.wait_ready()
        after = slices(state)
        assert after[: len(before)] == before
        with sqlite3.connect(state / "journal.sqlite3") as db:
            results = [r[0] for r in db.execute("SELECT result FROM rotations ORDER BY id")]
        assert results[0] == "interrupted"
    finally:
        restarted.stop()


def test_second_instance_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(daemon.config), "--state-dir",
         str(daemon.state_dir), "--listen", "127.0.0.1:0"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 75
    assert "another soakd is running" in second.stderr
    assert str(daemon.process.pid) in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_status_history_and_trigger_read_the_journal(daemon: Daemon) -> None:
    daemon.wait_for("soakd_rotations_total", 1, result="completed")
    base = [sys.executable, "-m", "daemon.cli"]
    args = ["--config", str(daemon.config), "--state-dir", str(daemon.state_dir)]
    status = subprocess.run([*base, "status", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=False)
    assert status.returncode == 0
    assert f"running (pid {daemon.process.pid})" in status.stdout
    assert "rotation 1" in status.stdout and "matmul" in status.stdout
    assert "sources up:" in status.stdout and "replay" in status.stdout
    history = subprocess.run([*base, "history", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=False)
    assert history.returncode == 0 and "completed" in history.stdout
    trigger = subprocess.run([*base, "trigger", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=False)
    assert trigger.returncode == 0 and "SIGUSR1" in trigger.stdout
    daemon.wait_for("soakd_rotations_total", 2, result="completed")


@pytest.mark.parametrize("text, key", [
    ("[schedule]\ninterval_minutes = -5\n", "schedule.interval_minutes"),
    ("[daemon]\nlisten = 'nowhere'\n", "daemon.listen"),
    ("[schedule]\nprofile = 'huge'\n", "schedule.profile"),
    ("[workload.overrides]\n'matmul.n' = 0\n", "matmul.n"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("this is = not toml [", "--config"),
])
def test_bad_config_exits_78_with_one_line(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
                          "--state-dir", str(tmp_path / "state")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "CI": ""})
    assert run.returncode == 78
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert key in lines[0] and "Traceback" not in run.stderr
