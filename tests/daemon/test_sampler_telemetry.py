"""The sampler's newer accounts: energy over measured intervals, whole-system energy, throttle
state and seconds, device health events, power methods, resets and gaps."""

from __future__ import annotations

import pytest
from fake_sources import Clock, Scripted

from daemon.energy import EnergyHistory
from daemon.sampler import Sampler
from daemon.sources.base import DeviceStatus, HardwareErrorEvent, Reading, ReadingIssue


def run(sampler: Sampler, clock: Clock, ticks: int, step: float = 1.0):
    snaps = []
    for _ in range(ticks):
        snaps.append(sampler.sample_once())
        clock.now += step
    return snaps


# --- energy over measured time -------------------------------------------------------------


def test_energy_over_interpolates_inside_ticks():
    """100 W constant for 10 ticks of 1 s: any interval gets 100 J per second, edges included."""
    clock = Clock(0.0)
    rapl = Scripted("rapl", [Reading(), *[Reading(energy_joules={"package": 100.0})] * 9])
    sampler = Sampler([rapl], clock=clock)
    run(sampler, clock, 10)  # ticks at 0..9 s
    measured = sampler.energy_over([(1.25, 3.5), (6.0, 6.75)])
    assert measured.joules == {("rapl", "package"): pytest.approx(100.0 * (2.25 + 0.75))}
    assert measured.system.joules == pytest.approx(300.0)
    assert (measured.method, measured.seconds, measured.covered_seconds) == ("interpolated", 3.0, 3.0)
    partly_outside = sampler.energy_over([(8.0, 12.0)])  # history ends at 9 s
    assert partly_outside.method == "clamped" and partly_outside.covered_seconds == 1.0
    assert partly_outside.components == {"package": pytest.approx(100.0)}
    with pytest.raises(ValueError):
        sampler.energy_over([(3.0, 2.0)])


def test_energy_over_a_power_step_is_off_by_at_most_one_tick():
    """50 W then 150 W from t=5.5 s; ticks every 1 s. The interval (5.5, 8) truly used 375 J."""
    clock = Clock(0.0)
    per_tick = [Reading()] + [Reading(energy_joules={"gpu0": j}) for j in (50, 50, 50, 50, 50, 100, 150, 150, 150)]
    sampler = Sampler([Scripted("nvml", per_tick)], clock=clock)
    run(sampler, clock, 10)
    measured = sampler.energy_over([(5.5, 8.0)]).components["gpu0"]
    assert measured == pytest.approx(350.0)  # interpolation spreads the step over its tick
    assert abs(measured - 375.0) <= 150.0 * 1.0  # bound: one tick of the higher power


def test_energy_history_is_bounded_and_gaps_are_reported():
    history = EnergyHistory(max_points=10)
    for t in range(100):
        history.add(float(t), {("a", "x"): float(t)})
    assert len(history._times) <= 11
    history.add_gap("a", 95.0, 97.0)
    result = history.over([(94.0, 98.0)])
    assert result.unmeasured_seconds == pytest.approx(2.0)
    assert result.components == {"x": pytest.approx(4.0)}


# --- whole-system energy -------------------------------------------------------------------


def test_system_energy_counts_totals_not_their_parts():
    clock = Clock()
    rapl = Scripted("rapl", [Reading(energy_joules={"package": 10.0, "dram": 2.0, "psys": 15.0, "core": 4.0})])
    gpu = Scripted("nvml", [Reading(energy_joules={"gpu0": 100.0})])
    sampler = Sampler([rapl, gpu], clock=clock)
    snaps = run(sampler, clock, 3)
    assert snaps[-1].system_energy_joules == pytest.approx(3 * 115.0)  # psys + gpu0, never 27 + ...
    assert snaps[-1].energy_breakdown.counted == ("gpu0", "psys")
    [plan] = [e for e in snaps[-1].events if e.kind == "energy_plan"]
    assert plan.detail["counted"] == ["gpu0", "psys"]
    assert "core in package" in plan.detail["description"]


def test_a_total_reading_zero_is_replaced_by_its_parts_per_tick():
    clock = Clock()
    rapl = Scripted("rapl", [Reading(energy_joules={"psys": 0.0, "package": 8.0, "dram": 1.0})])
    sampler = Sampler([rapl], clock=clock)
    snap = run(sampler, clock, 2)[-1]
    assert snap.system_energy_joules == pytest.approx(18.0)
    assert snap.energy_breakdown.notes  # said so


# --- power method, resets, gaps ------------------------------------------------------------


def test_instantaneous_power_is_labelled_as_such():
    clock = Clock()
    nvml = Scripted("nvml", [Reading(power_watts={"gpu1": 80.0}),
                             Reading(energy_joules={"gpu0": 250.0}, power_watts={"gpu1": 81.0})])
    snap = run(Sampler([nvml], clock=clock), clock, 2)[-1]
    assert snap.power_method == {("nvml", "gpu0"): "counter", ("nvml", "gpu1"): "instantaneous"}


def test_resets_and_gaps_are_counted_and_become_events():
    clock = Clock()
    source = Scripted("powermetrics", [Reading(counter_resets={"package": 1}, gaps=[(90.0, 93.5)]), Reading()])
    snap = run(Sampler([source], clock=clock), clock, 2)[-1]
    assert snap.energy_resets_total == {("powermetrics", "package"): 1}
    assert snap.gap_seconds_total == {"powermetrics": pytest.approx(3.5)}
    assert [(e.seq, e.kind) for e in snap.events] == [(1, "energy_reset"), (2, "gap")]


# --- devices and hardware errors -----------------------------------------------------------


def test_device_health_issues_and_hardware_errors_across_ticks():
    clock = Clock()
    lost = DeviceStatus(False, "gpu_is_lost: GPU is lost")
    readings = [
        Reading(devices={"gpu0": DeviceStatus(True, "ok"), "gpu1": DeviceStatus(True, "ok")},
                issues=[ReadingIssue("gpu0", "ecc_corrected_volatile", "not_supported", "x", lasting=True)],
                hardware_errors={("gpu1", "pcie_replay"): 3}),
        Reading(devices={"gpu0": DeviceStatus(True, "ok"), "gpu1": lost},
                issues=[ReadingIssue("gpu0", "ecc_corrected_volatile", "not_supported", "x", lasting=True),
                        ReadingIssue("gpu0", "temperature", "unknown", "y")],
                hardware_errors={("gpu1", "pcie_replay"): 5},
                hardware_events=[HardwareErrorEvent("gpu1", "pcie_replay", 2, 5)]),
        Reading(devices={"gpu0": DeviceStatus(True, "ok"), "gpu1": DeviceStatus(True, "ok")},
                issues=[ReadingIssue("gpu0", "ecc_corrected_volatile", "not_supported", "x", lasting=True)],
                hardware_errors={("gpu1", "pcie_replay"): 5}),
    ]
    snaps = run(Sampler([Scripted("nvml", readings)], clock=clock), clock, 3)
    assert snaps[1].devices[("nvml", "gpu1")] == lost
    assert snaps[1].health["nvml"].reason == "ok; down: gpu1 (gpu_is_lost: GPU is lost)"
    assert snaps[2].health["nvml"].reason == "ok"
    assert snaps[2].reading_unavailable == {("nvml", "gpu0", "ecc_corrected_volatile"): "not_supported"}
    assert snaps[2].reading_errors_total == {("nvml", "gpu0", "ecc_corrected_volatile", "not_supported"): 1,
                                             ("nvml", "gpu0", "temperature", "unknown"): 1}
    assert snaps[2].hardware_errors_total == {("nvml", "gpu1", "pcie_replay"): 5}
    kinds = [(e.kind, e.device) for e in snaps[2].events]
    assert kinds == [("reading_unavailable", "gpu0"), ("device_down", "gpu1"), ("hardware_error", "gpu1"),
                     ("device_up", "gpu1")]
    [error] = [e for e in snaps[2].events if e.kind == "hardware_error"]
    assert error.detail == {"kind": "pcie_replay", "count": 2, "total": 5, "detail": ""}
    assert error.monotonic == 101.0  # the tick it was seen at, for phase attribution


# --- throttling ----------------------------------------------------------------------------


def test_throttle_state_seconds_and_pressure_escalations():
    clock = Clock()
    nvml = Scripted("nvml", [
        Reading(throttle_active=frozenset({"sw_power_cap"}), throttle_events={"sw_power_cap": 1}),
        Reading(throttle_active=frozenset({"sw_power_cap"})),
        Reading(throttle_active=frozenset(), throttle_events={"gpu_idle": 1}),  # not a throttle
    ])
    notify = Scripted("thermal_notify", [Reading(thermal_pressure=level) for level in
                                         ("nominal", "moderate", "heavy", "moderate", "heavy")])
    sampler = Sampler([notify, nvml], clock=clock)
    snaps = run(sampler, clock, 5, step=2.0)
    assert snaps[0].throttle_known and snaps[0].throttle_active == frozenset({("nvml", "sw_power_cap")})
    assert snaps[1].throttle_active == frozenset({("nvml", "sw_power_cap"),
                                                  ("thermal_notify", "thermal_pressure")})
    assert snaps[2].throttle_active == frozenset({("thermal_notify", "thermal_pressure")})
    last = snaps[-1]
    # escalations: nominal->moderate, moderate->heavy, moderate->heavy again (not heavy->moderate)
    assert last.throttle_events_total == {("nvml", "sw_power_cap"): 1, ("thermal_notify", "thermal_pressure"): 3}
    # sample-and-hold over 2-s ticks: power cap held for 2 ticks, pressure >= moderate for 3
    assert last.throttled_seconds_total == {("nvml", "sw_power_cap"): pytest.approx(4.0),
                                            ("thermal_notify", "thermal_pressure"): pytest.approx(6.0)}


def test_a_host_with_no_throttle_source_says_unknown():
    clock = Clock()
    snap = run(Sampler([Scripted("rapl", [Reading(energy_joules={"package": 1.0})])], clock=clock), clock, 2)[-1]
    assert snap.throttle_known is False and snap.throttle_active == frozenset()
    assert snap.throttle_events_total == {} and snap.throttled_seconds_total == {}
