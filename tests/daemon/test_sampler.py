"""The sampler: accounting, health, isolation of failing sources, the thread, replay."""

from __future__ import annotations

import dataclasses
import sys
import time

import pytest
from fake_sources import Clock, Scripted

from daemon.sampler import Sampler, Snapshot, SourceHealth, default_sources
from daemon.sources.base import NullSource, Reading, SourceError, SourceUnavailable
from daemon.sources.replay import ReplaySource


def test_snapshot_fields_are_exactly_the_agreed_ones():
    assert [f.name for f in dataclasses.fields(Snapshot)] == [
        "time", "monotonic", "energy_joules", "power_watts", "temperatures_celsius",
        "thermal_pressure", "thermal_seconds_total", "throttle_events_total", "clock_hertz",
        "memory_bytes", "health",
        # added for per-device health, hardware errors, energy totals and throttle state
        "power_method", "energy_resets_total", "system_energy_joules", "energy_breakdown",
        "throttle_active", "throttle_known", "throttled_seconds_total", "devices", "reading_unavailable",
        "reading_errors_total", "hardware_errors_total", "hardware_conditions", "power_limit_watts",
        "gap_seconds_total", "events"]
    assert [f.name for f in dataclasses.fields(SourceHealth)] == [
        "name", "up", "reason", "last_error", "errors_total", "reads_total",
        "read_duration_seconds"]


def test_counter_source_energy_power_and_gauges():
    clock = Clock()
    rapl = Scripted("rapl", [Reading(), Reading(energy_joules={"package": 30.0}),
                             Reading(energy_joules={"package": 10.0})])
    sampler = Sampler([rapl], clock=clock, wall=lambda: 1.7e9)
    first = sampler.sample_once()
    assert first.energy_joules == {} and first.power_watts == {}
    clock.now += 2.0
    second = sampler.sample_once()
    assert second.energy_joules == {("rapl", "package"): 30.0}
    assert second.power_watts == {("rapl", "package"): pytest.approx(15.0)}  # ΔE/Δt
    clock.now += 0.5
    third = sampler.sample_once()
    assert third.energy_joules == {("rapl", "package"): 40.0}
    assert third.power_watts == {("rapl", "package"): pytest.approx(20.0)}
    assert third.time == 1.7e9 and third.monotonic == clock.now
    health = third.health["rapl"]
    assert (health.up, health.reason, health.errors_total, health.reads_total) == (
        True, "ok", 0, 3)


def test_measured_window_wins_and_power_holds_without_new_energy():
    clock = Clock()
    pm = Scripted("powermetrics", [
        Reading(energy_joules={"cpu": 2.0, "ane": 0.0}, energy_window_seconds=1.02,
                thermal_pressure="nominal", clock_hertz={"gpu": 1.2e9}),
        Reading(thermal_pressure="nominal", clock_hertz={"gpu": 1.2e9}),  # no new sample yet
    ])
    sampler = Sampler([pm], clock=clock)
    first = sampler.sample_once()
    assert first.power_watts[("powermetrics", "cpu")] == pytest.approx(2.0 / 1.02)
    clock.now += 1.0
    second = sampler.sample_once()
    assert second.power_watts[("powermetrics", "cpu")] == pytest.approx(2.0 / 1.02)
    assert second.energy_joules[("powermetrics", "cpu")] == 2.0
    assert second.clock_hertz == {("powermetrics", "gpu"): 1.2e9}


def test_instantaneous_power_is_only_a_fallback():
    clock = Clock()
    nvml = Scripted("nvml", [
        Reading(power_watts={"gpu0": 300.0, "gpu1": 80.0}),
        Reading(energy_joules={"gpu0": 250.0}, power_watts={"gpu0": 300.0, "gpu1": 80.0}),
        Reading(energy_joules={"gpu0": 260.0}, power_watts={"gpu0": 900.0, "gpu1": 81.0}),
    ])
    sampler = Sampler([nvml], clock=clock)
    assert sampler.sample_once().power_watts == {("nvml", "gpu0"): 300.0, ("nvml", "gpu1"): 80.0}
    clock.now += 1.0
    assert sampler.sample_once().power_watts[("nvml", "gpu0")] == pytest.approx(250.0)
    clock.now += 1.0
    power = sampler.sample_once().power_watts
    assert power[("nvml", "gpu0")] == pytest.approx(260.0)  # ΔE/Δt, not the 900 W spike
    assert power[("nvml", "gpu1")] == 81.0  # no counter: instantaneous fallback


def test_one_failing_source_does_not_stop_the_others():
    clock = Clock()
    good = Scripted("rapl", [Reading(energy_joules={"package": 1.0}, temperatures_celsius={},
                                     memory_bytes={"rss": 5})])
    bad = Scripted("broken", [RuntimeError("sensor fell off the bus")])
    flaky = Scripted("flaky", [Reading(temperatures_celsius={"gpu0": 70.0}),
                               SourceError("timeout"),
                               Reading(temperatures_celsius={"gpu0": 71.0})])
    sampler = Sampler([bad, good, flaky], clock=clock)
    snaps = []
    for _ in range(4):
        snaps.append(sampler.sample_once())
        clock.now += 1.0
    assert snaps[-1].energy_joules == {("rapl", "package"): 4.0}
    broken = snaps[-1].health["broken"]
    assert (broken.up, broken.errors_total, broken.reads_total) == (False, 4, 0)
    assert broken.last_error == "sensor fell off the bus"
    assert broken.reason == "read failed: sensor fell off the bus"
    assert snaps[1].health["flaky"].up is False
    assert ("flaky", "gpu0") not in snaps[1].temperatures_celsius  # no stale gauges
    assert snaps[2].temperatures_celsius[("flaky", "gpu0")] == 71.0
    recovered = snaps[2].health["flaky"]
    assert recovered.up and recovered.errors_total == 1 and recovered.last_error == "timeout"
    assert snaps[-1].memory_bytes == {"rss": 5}


def test_unavailable_sources_are_down_with_reason_and_reprobed():
    clock = Clock()
    absent = NullSource("powermetrics", "unavailable: powermetrics needs macOS")
    crashing_probe = Scripted("nvml", [Reading()], available=OSError("driver gone"))
    later = Scripted("late", [Reading(energy_joules={"x": 1.0})],
                     available=(False, "unavailable: not yet"))
    sampler = Sampler([absent, crashing_probe, later], clock=clock, reprobe_s=60)
    snap = sampler.sample_once()
    assert snap.health["powermetrics"] == SourceHealth(
        "powermetrics", False, "unavailable: powermetrics needs macOS", None, 0, 0, 0.0)
    assert snap.health["nvml"].reason.startswith("unavailable: probe failed")
    later.availability = (True, "ok: now")
    clock.now += 30
    assert not sampler.sample_once().health["late"].up  # not re-probed before reprobe_s
    clock.now += 31
    snap = sampler.sample_once()
    assert snap.health["late"].up and snap.health["late"].reason == "ok: now"
    assert later.probes == 2 and later.reads == 1


def test_source_unavailable_during_read_marks_it_for_reprobe():
    clock = Clock()
    source = Scripted("rapl", [Reading(), SourceUnavailable("unavailable: now root-only"),
                               Reading()])
    sampler = Sampler([source], clock=clock, reprobe_s=10)
    assert sampler.sample_once().health["rapl"].up
    clock.now += 100  # long after the first probe: the wait counts from the failed read
    snap = sampler.sample_once()
    assert snap.health["rapl"].reason == "unavailable: now root-only"
    clock.now += 5
    sampler.sample_once()
    assert (source.reads, source.probes) == (2, 1)
    clock.now += 6
    assert sampler.sample_once().health["rapl"].up
    assert (source.reads, source.probes) == (3, 2)


def test_thermal_pressure_best_source_and_seconds_per_level():
    clock = Clock()
    pm = Scripted("powermetrics", [Reading(thermal_pressure="heavy"), SourceError("gone"),
                                   Reading(thermal_pressure="heavy")])
    notify = Scripted("thermal_notify", [Reading(thermal_pressure="moderate")])
    sampler = Sampler([pm, notify], clock=clock)
    levels_seen = []
    for step in (2.0, 3.0, 4.0, 0.0):
        snap = sampler.sample_once()
        levels_seen.append(snap.thermal_pressure)
        clock.now += step
    assert levels_seen == ["heavy", "moderate", "heavy", "heavy"]
    # sample-and-hold: 2 s at heavy, then 3 s at moderate, then 4 s at heavy
    assert snap.thermal_seconds_total == {"nominal": 0.0, "light": 0.0, "moderate": 3.0,
                                          "heavy": 6.0, "trapping": 0.0, "sleeping": 0.0}


def test_no_thermal_source_means_no_level_and_no_seconds():
    snap = Sampler([Scripted("rapl", [Reading()])]).sample_once()
    assert snap.thermal_pressure is None and snap.thermal_seconds_total == {}


def test_throttle_events_accumulate():
    source = Scripted("nvml", [Reading(throttle_events={"sw_power_cap": 1}), Reading(),
                               Reading(throttle_events={"sw_power_cap": 1, "hw_slowdown": 2})])
    sampler = Sampler([source])
    for _ in range(3):
        snap = sampler.sample_once()
    assert snap.throttle_events_total == {("nvml", "sw_power_cap"): 2, ("nvml", "hw_slowdown"): 2}


def test_energy_between_snapshots_sums_sources_per_component():
    clock = Clock()
    a = Scripted("powermetrics", [Reading(energy_joules={"gpu": 1.0, "cpu": 0.5},
                                          energy_window_seconds=1.0)])
    b = Scripted("replay", [Reading(energy_joules={"gpu": 2.0}, energy_window_seconds=1.0)])
    sampler = Sampler([a, b], clock=clock)
    start = sampler.sample_once()
    for _ in range(3):
        clock.now += 1
        end = sampler.sample_once()
    assert Sampler.energy_between(start, end) == {"gpu": pytest.approx(9.0),
                                                  "cpu": pytest.approx(1.5)}
    with pytest.raises(ValueError):
        Sampler.energy_between(end, start)


def test_snapshot_never_reads_hardware():
    source = Scripted("rapl", [Reading()])
    sampler = Sampler([source])
    before = sampler.snapshot()
    assert source.reads == 0 and source.probes == 0
    assert before.health["rapl"].reason == "not sampled yet" and not before.health["rapl"].up
    sampler.sample_once()
    for _ in range(100):
        sampler.snapshot()
    assert source.reads == 1


def test_thread_keeps_sampling_while_a_source_fails_and_stop_closes_sources():
    good = Scripted("good", [Reading(energy_joules={"cpu": 0.1})])
    bad = Scripted("bad", [ZeroDivisionError("boom")])
    sampler = Sampler([bad, good], interval_s=0.02)
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while sampler.snapshot().health["good"].reads_total < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()
    snap = sampler.snapshot()
    assert snap.health["good"].reads_total >= 10
    assert snap.health["bad"].errors_total >= 10
    assert snap.energy_joules[("good", "cpu")] == pytest.approx(
        0.1 * snap.health["good"].reads_total)
    assert good.closed and bad.closed
    assert sampler.cpu_seconds >= 0.0
    reads = good.reads
    time.sleep(0.1)
    assert good.reads == reads  # the thread is gone


def test_invalid_construction():
    with pytest.raises(ValueError, match="positive"):
        Sampler([], interval_s=0)
    with pytest.raises(ValueError, match="duplicate"):
        Sampler([Scripted("a", [Reading()]), Scripted("a", [Reading()])])


def test_replay_source_through_the_sampler(fixtures_dir):
    clock = Clock()
    source = ReplaySource(fixtures_dir / "M1_text_codecarbon_1.txt")
    sampler = Sampler([source], clock=clock)
    snaps = []
    for _ in range(12):  # 10 samples, then it loops
        snaps.append(sampler.sample_once())
        clock.now += 1.0
    # Power is the recorded power (energy over the recorded window), whatever the cadence.
    assert snaps[0].power_watts[("replay", "package")] == pytest.approx(1.473)
    assert snaps[0].power_watts[("replay", "dram")] == pytest.approx(0.220)
    assert snaps[1].power_watts[("replay", "cpu")] == pytest.approx(0.420)
    assert snaps[10].power_watts[("replay", "package")] == pytest.approx(1.473)
    energies = [s.energy_joules[("replay", "package")] for s in snaps]
    assert energies == sorted(energies)
    assert energies[0] == pytest.approx(1.473 * 0.10451)


def test_replay_thermal_from_recorded_file(fixtures_dir):
    sampler = Sampler([ReplaySource(fixtures_dir / "M1Max_text_powermetrics-tui_1.txt")])
    snap = sampler.sample_once()
    assert snap.thermal_pressure == "nominal"
    assert snap.clock_hertz[("replay", "gpu")] == pytest.approx(418e6)


def test_replay_of_unreadable_file_is_down(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("not powermetrics\n")
    snap = Sampler([ReplaySource(bad)]).sample_once()
    assert not snap.health["replay"].up
    assert "cannot replay" in snap.health["replay"].reason


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux source set")
def test_default_sources_on_linux(tmp_path, fixtures_dir):
    names = [s.name for s in default_sources()]
    assert names == ["nvml", "rapl", "sysfs_thermal", "memory"]
    sources = default_sources({"replay_file": str(fixtures_dir / "M1_plist_pumas_1.plist"),
                               "powermetrics": True, "nvml": False,
                               "rapl_root": str(tmp_path / "powercap"),
                               "thermal_root": str(tmp_path / "thermal"),
                               "powermetrics_interval_ms": 500})
    assert [s.name for s in sources] == ["replay", "powermetrics", "rapl", "sysfs_thermal",
                                         "memory"]
    snap = Sampler(sources).sample_once()
    assert snap.health["replay"].up and snap.health["memory"].up
    assert "needs macOS" in snap.health["powermetrics"].reason
    assert "no powercap tree" in snap.health["rapl"].reason
    assert snap.energy_joules[("replay", "cpu")] == pytest.approx(0.089)
    assert snap.memory_bytes["rss"] > 0
