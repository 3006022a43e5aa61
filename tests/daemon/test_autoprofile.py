"""The default fits the machine: `auto` picks the profile, fits it to the interval, and says so;
progress shows in the log, `soakd status` and the metrics (against the real `soakd run`)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_process import REPO, Daemon

from daemon.autoprofile import choose_profile, schedule_interval
from daemon.config import Config
from workloads.phases import PROFILES


def test_auto_on_a_cpu_only_host_runs_the_cpu_shapes() -> None:
    choice = choose_profile(Config(), ["cpu"])
    assert choice.name == "cpu" and "only the CPU runs here" in choice.reason
    assert choice.profile.conv == PROFILES["cpu"].conv
    assert choice.fits is True and choice.estimate_s <= 3600


def test_auto_with_an_accelerator_runs_heavy_shapes_fitted_to_the_hour() -> None:
    choice = choose_profile(Config(), ["cuda"])
    assert choice.name == "heavy" and "cuda" in choice.reason
    assert choice.profile.matmul == PROFILES["heavy"].matmul
    assert choice.profile.phase_seconds == 18 * 60 and "18 min" in choice.reason  # 3 x 18 + baselines + overhead
    assert choice.fits is True and choice.estimate_s <= choice.interval_s == 3600


def test_an_explicit_profile_runs_as_configured_and_says_when_it_does_not_fit() -> None:
    heavy = choose_profile(replace(Config(), profile="heavy"), ["cuda"])
    assert heavy.profile.phase_seconds == 20 * 60  # never changed behind the user's back
    assert heavy.fits is False and heavy.estimate_s > 3600  # 60 min of phases + overhead + baselines
    two_hours = choose_profile(replace(Config(), profile="heavy", interval_seconds=7200.0), ["cuda"])
    assert two_hours.fits is True


def test_a_cron_schedule_has_the_gap_between_its_times() -> None:
    assert schedule_interval(replace(Config(), cron="*/30 * * * *")) == 1800.0


@pytest.mark.slow
def test_the_daemon_says_its_profile_and_shows_progress(tmp_path: Path) -> None:
    config = tmp_path / "soakd.toml"
    config.write_text('[workload]\nbackends = "cpu"\nphases = ["matmul"]\n[workload.overrides]\n'
                      'phase_seconds = 40\nslice_seconds = 2\n[sources]\nnvml = false\nrapl = false\n',
                      encoding="utf-8")
    daemon = Daemon(tmp_path / "state", config)
    try:
        daemon.wait_ready()
        daemon.wait_for("soakd_steps_total", 1, timeout=60)
        time.sleep(3)
        ratio = daemon.value("soakd_rotation_progress_ratio")
        remaining = daemon.value("soakd_rotation_remaining_seconds")
        assert 0 < ratio < 1 and 0 < remaining <= 40
        assert daemon.value("soakd_rotation_estimated_seconds") == pytest.approx(40 + 60)
        assert daemon.value("soakd_rotation_fits_interval", basis="estimate") == 1
        status = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--config", str(config),
                                 "--state-dir", str(tmp_path / "state")], cwd=REPO, capture_output=True,
                                text=True, check=False, timeout=60)
    finally:
        daemon.stop()
    assert status.returncode == 0, status.stderr
    assert "profile: cpu (only the CPU runs here" in status.stdout
    assert "phase 1/1, slice" in status.stdout and "min left" in status.stdout
    log = daemon.log.read_text(encoding="utf-8")
    assert '"event": "profile"' in log and '"remaining_seconds"' in log
