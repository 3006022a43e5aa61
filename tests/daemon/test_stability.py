"""Live stability figures: sustained ratio, variation, time to first throttle, FLOP/J."""

from __future__ import annotations

import pytest

from daemon.stability import StabilityTracker, system_energy


def test_sustained_ratio_compares_last_minute_with_first_minute() -> None:
    tracker = StabilityTracker()
    for _ in range(240):  # 60 s at 100 FLOP/s
        tracker.add(0.25, 25.0)
    assert tracker.sustained_ratio() is None  # one window: no ratio yet, not 1.000
    for _ in range(240):  # then 60 s at 80 FLOP/s: throttled to 80%
        tracker.add(0.25, 20.0)
    assert tracker.sustained_ratio() == pytest.approx(0.8)
    assert tracker.throughput() == pytest.approx(80.0)
    assert tracker.variation() == pytest.approx(0.0)


def test_sustained_ratio_is_absent_until_the_windows_are_disjoint() -> None:
    """Throughput halved mid-phase in a 60 s phase: the first and last minute are the same
    minute, so the old ratio read 1.000 by construction. Now it is absent until two disjoint
    minutes exist, and then it reads the drop."""
    tracker = StabilityTracker()
    for _ in range(120):  # 30 s at 100 FLOP/s
        tracker.add(0.25, 25.0)
    for _ in range(120):  # 30 s at 50 FLOP/s
        tracker.add(0.25, 12.5)
    assert tracker.sustained_ratio() is None
    for _ in range(239):  # not yet two full minutes of measured time
        tracker.add(0.25, 12.5)
    assert tracker.sustained_ratio() is None
    tracker.add(0.25, 12.5)
    assert tracker.sustained_ratio() == pytest.approx(50.0 / 75.0)


def test_variation_is_the_coefficient_of_variation() -> None:
    tracker = StabilityTracker()
    for flop in (10.0, 30.0) * 20:
        tracker.add(1.0, flop)
    # mean 20, sample stddev of alternating 10/30 over 40 values = 10 * sqrt(40/39)
    assert tracker.variation() == pytest.approx(0.5 * (40 / 39) ** 0.5)


def test_flop_per_joule_needs_energy() -> None:
    tracker = StabilityTracker()
    tracker.add(1.0, 1e12)
    assert tracker.flop_per_joule() is None
    tracker.add_energy(50.0)
    assert tracker.flop_per_joule() == pytest.approx(2e10)


@pytest.mark.parametrize("components, expected", [
    ({"cpu": 1.0, "gpu": 2.0, "ane": 0.5, "combined": 3.5}, 3.5),
    ({"cpu": 1.0, "gpu": 2.0, "package": 6.0, "dram": 1.0}, 6.0),  # Monterey: package has DRAM
    ({"package": 40.0, "dram": 5.0, "gpu0": 300.0, "gpu1": 250.0}, 595.0),  # RAPL + NVML
    ({"cpu": 1.0, "gpu": 2.0}, 3.0),
    ({}, None),
])
def test_system_energy_counts_each_rail_once(components: dict[str, float], expected: float | None) -> None:
    assert system_energy(components) == expected
