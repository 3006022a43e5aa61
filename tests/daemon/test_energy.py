"""Whole-system energy: totals and their parts, decided from what exists on the machine."""

from __future__ import annotations

import pytest

from daemon.energy import breakdown, energy_parts, system_energy
from daemon.sources import registry


@pytest.mark.parametrize("components, expected, counted", [
    # issue 12 item 3: psys already contains package and DRAM (was 27)
    ({"package": 10.0, "dram": 2.0, "psys": 15.0}, 15.0, ("psys",)),
    # a package contains its cores; DRAM is a separate RAPL domain
    ({"package": 10.0, "core": 6.0, "uncore": 1.0, "dram": 2.0}, 12.0, ("dram", "package")),
    ({"package": 10.0, "core": 6.0, "package-1": 9.0, "core-1": 5.0, "dram-1": 1.0}, 20.0,
     ("dram-1", "package", "package-1")),
    # powermetrics: combined = cpu + gpu + ane (Ventura+); Monterey's package has DRAM too
    ({"cpu": 1.0, "gpu": 2.0, "ane": 0.5, "combined": 3.5}, 3.5, ("combined",)),
    ({"cpu": 1.0, "gpu": 2.0, "package": 6.0, "dram": 1.0}, 6.0, ("package",)),
    ({"cpu": 1.0, "gpu": 2.0}, 3.0, ("cpu", "gpu")),
    ({"package": 27.5}, 27.5, ("package",)),  # Intel Mac: package_joules alone
    # NVML GPUs are their own; with RAPL beside them
    ({"psys": 40.0, "package": 30.0, "gpu0": 300.0, "gpu1": 250.0}, 590.0, ("gpu0", "gpu1", "psys")),
])
def test_totals_are_counted_not_their_parts(components, expected, counted):
    result = breakdown(components)
    assert result.joules == pytest.approx(expected)
    assert result.counted == counted
    assert system_energy(components) == pytest.approx(expected)


def test_no_components_is_none_and_bad_values_count_zero():
    assert system_energy({}) is None
    assert breakdown({"gpu0": float("nan"), "gpu1": -3.0, "gpu2": 4.0}).joules == 4.0


def test_a_zero_total_is_replaced_by_its_parts_recursively():
    result = breakdown({"psys": 0.0, "package": 0.0, "core": 3.0, "uncore": 1.0, "dram": 2.0})
    assert result.joules == pytest.approx(6.0)
    assert result.counted == ("dram", "core", "uncore")
    assert len(result.notes) == 2 and result.notes[0].startswith("psys read 0 J")
    # a total with no parts that read more stays counted (a truly idle zone)
    assert breakdown({"psys": 0.0, "package": 0.0}).counted == ("psys",)


def test_describe_records_the_choice():
    text = breakdown({"psys": 37.2, "package": 7.8, "core": 1.4, "uncore": 2.4, "dram": 4.8}).describe()
    assert text == "psys (core, uncore in package; dram, package in psys)"


def test_a_source_declares_its_own_parts_and_cycles_are_dropped(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    registry.register(registry.SourceSpec(
        name="standin_parts", build=lambda _o: None,  # type: ignore[arg-type,return-value]
        description="test", energy_parts=lambda present: {"a": "b", "b": "a", "x": "total"}))
    assert energy_parts({"a", "b", "x", "total"}) == {"x": "total"}
    assert breakdown({"a": 1.0, "b": 2.0, "x": 5.0, "total": 7.0}).joules == pytest.approx(10.0)
