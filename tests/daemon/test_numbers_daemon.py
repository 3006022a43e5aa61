"""Numbers at the source, against the real `soakd run`: a reload never changes past work, and FLOP
per joule is charged only for the measured time."""

from __future__ import annotations

import os
import signal
import sqlite3
import textwrap
from pathlib import Path

import pytest
from daemon_process import Daemon, sample_value
from fake_sources import install_source_plugin

from workloads.phases import PROFILES

pytestmark = pytest.mark.slow

CONSTANT_SOURCE = textwrap.dedent('''\
    """A stand-in energy source drawing a constant 100 W (entry point soakd.sources)."""
    import time

    from daemon.sources.base import Reading, Source
    from daemon.sources.registry import SourceSpec, register


    class ConstantPower(Source):
        name = "constant"

        def __init__(self) -> None:
            self.last = None

        def available(self):
            return True, "ok: 100 W stand-in"

        def read(self):
            now = time.monotonic()
            joules = 0.0 if self.last is None else 100.0 * (now - self.last)
            self.last = now
            return Reading(energy_joules={"constant_rail": joules})


    register(SourceSpec(name="constant", description="100 W, always", build=lambda options: ConstantPower()))
''')


def constant_source(tmp_path: Path) -> dict[str, str]:
    site = install_source_plugin(tmp_path / "site", "soakd_constant_source", CONSTANT_SOURCE, "constant")
    return {"PYTHONPATH": str(site)}


def config(path: Path, profile: str = "ci", phase_seconds: float = 3.0, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        [schedule]
        profile = "{profile}"
        interval_minutes = 600
        [workload]
        backends = "cpu"
        phases = ["matmul", "conv"]
        [workload.overrides]
        phase_seconds = {phase_seconds}
        slice_seconds = 1
        [sources]
        nvml = false
        rapl = false
        sysfs_thermal = false
        {extra}
        """), encoding="utf-8")
    return path


def test_a_reload_mid_rotation_does_not_change_the_running_slices_flop(tmp_path: Path) -> None:
    """SIGHUP to a heavy profile while a ci rotation runs: the ci steps still count ci FLOP (the
    exporter once took FLOP per step from the live config: heavy FLOP for ci steps)."""
    path = config(tmp_path / "soakd.toml", phase_seconds=4.0)
    daemon = Daemon(tmp_path / "state", path)
    try:
        daemon.wait_ready()
        daemon.wait_for("soakd_steps_total", 1, phase="matmul")
        config(path, profile="heavy", phase_seconds=4.0)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("soakd_rotations_total", 1, timeout=180, result="completed")
        text = daemon.scrape()
    finally:
        daemon.stop()
    assert "config_reloaded" in daemon.log.read_text(encoding="utf-8")
    for phase in ("matmul", "conv"):
        steps = sample_value(text, "soakd_steps_total", phase=phase)
        flop = sample_value(text, "soakd_flop_total", phase=phase)
        assert steps > 0
        assert flop == steps * PROFILES["ci"].spec(phase).flop_per_step(), phase
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        rows = db.execute("SELECT phase, steps, flop, run FROM slices").fetchall()
    assert rows and all(flop == steps * PROFILES["ci"].spec(phase).flop_per_step()
                        for phase, steps, flop, _ in rows)
    assert all("batch=2 n=128" in run for phase, _, _, run in rows if phase == "matmul")


def test_flop_per_joule_counts_the_measured_time_only(tmp_path: Path) -> None:
    """With a constant 100 W and a real worker, FLOP/J = FLOP / (100 W x measured seconds): the
    worker's start-up, imports, model build and warm-up do no measured work and cost nothing.
    (Charged from slice start to end it read 4.0e6 FLOP/J against 1.4e7.)"""
    env = constant_source(tmp_path)
    path = config(tmp_path / "soakd.toml", phase_seconds=3.0)
    daemon = Daemon(tmp_path / "state", path, env=env)
    try:
        daemon.wait_ready()
        daemon.wait_for("soakd_rotations_total", 1, timeout=180, result="completed")
        text = daemon.scrape()
    finally:
        daemon.stop()
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        rows = db.execute("SELECT phase, flop, seconds, system_energy_joules, started_at, ended_at, energy_note "
                          "FROM slices ORDER BY id").fetchall()
    for phase in ("matmul", "conv"):
        mine = [r for r in rows if r[0] == phase]
        flop, seconds = sum(r[1] for r in mine), sum(r[2] for r in mine)
        joules = sum(r[3] for r in mine)
        assert joules == pytest.approx(100.0 * seconds, rel=0.05), phase
        wall = sum(r[5] - r[4] for r in mine)
        assert wall > seconds  # the slices' turns held more than their measured time
        exported = sample_value(text, "soakd_flop_per_joule", phase=phase)
        assert exported == pytest.approx(flop / (100.0 * seconds), rel=0.05), phase
        assert all("constant_rail" in (r[6] or "") for r in mine)
    assert os.environ.get("PYTHONPATH", "") != env["PYTHONPATH"]  # the stand-in stayed in the daemon
