"""sysfs thermal zones on a fake tree, psutil sensors through a stand-in, and memory."""

from __future__ import annotations

from collections import namedtuple

import pytest

from daemon.sources.memory import MemorySource
from daemon.sources.sysfs_thermal import SysfsThermalSource, psutil_temperatures, read_thermal_zones

shwtemp = namedtuple("shwtemp", "label current high critical")  # psutil's own shape


def thermal_zone(root, number, kind, millidegrees):
    path = root / f"thermal_zone{number}"
    path.mkdir(parents=True)
    (path / "type").write_text(kind + "\n")
    (path / "temp").write_text(f"{millidegrees}\n")
    return path


@pytest.fixture
def thermal_root(tmp_path):
    root = tmp_path / "thermal"
    thermal_zone(root, 0, "acpitz", 27800)
    thermal_zone(root, 1, "x86_pkg_temp", 64500)
    thermal_zone(root, 2, "acpitz", 29800)
    broken = thermal_zone(root, 3, "iwlwifi_1", 0)
    (broken / "temp").write_text("")  # reading fails (ENODATA in real life): skipped
    (root / "cooling_device0").mkdir()
    return root


def test_thermal_zones_in_celsius_with_unique_names(thermal_root):
    assert read_thermal_zones(thermal_root) == {
        "acpitz_0": 27.8, "x86_pkg_temp": 64.5, "acpitz_2": 29.8}


def test_psutil_sensors_flattened():
    sensors = {
        "coretemp": [shwtemp("Package id 0", 66.0, 100.0, 100.0), shwtemp("Core 0", 61.0, 100, 100)],
        "nvme": [shwtemp("", 38.85, 84.85, 84.85), shwtemp("", 40.0, None, None)],
    }
    assert psutil_temperatures(sensors) == {
        "coretemp_package_id_0": 66.0, "coretemp_core_0": 61.0, "nvme_0": 38.85, "nvme_1": 40.0}


def test_source_combines_zones_and_psutil(thermal_root):
    source = SysfsThermalSource(thermal_root, sensors=lambda: {"k10temp": [shwtemp("Tctl", 55.5,
                                                                                 None, None)]})
    ok, reason = source.available()
    assert ok and reason == "ok: 4 sensor(s)"
    assert source.read().temperatures_celsius == {
        "zone_acpitz_0": 27.8, "zone_x86_pkg_temp": 64.5, "zone_acpitz_2": 29.8,
        "k10temp_tctl": 55.5}


def test_source_without_sensors_is_unavailable(tmp_path):
    ok, reason = SysfsThermalSource(tmp_path / "none", sensors=dict).available()
    assert not ok and "no thermal zones" in reason


def test_memory_source_reports_base_units():
    source = MemorySource()
    assert source.available() == (True, "ok")
    memory = source.read().memory_bytes
    assert {"rss", "system_used", "system_available", "swap_used"} <= memory.keys()
    assert memory["rss"] > 10 * 2**20  # this Python process
    assert all(isinstance(v, int) and v >= 0 for v in memory.values())


def test_memory_source_missing_process_is_unavailable():
    ok, reason = MemorySource(pid=2**22 + 12345).available()
    assert not ok and reason.startswith("unavailable")
