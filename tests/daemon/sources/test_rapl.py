"""RAPL on fake powercap trees: zone naming, deltas, wrap-around, permissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.sources.rapl import RaplSource, counter_delta, discover_zones

MAX = 262_143_328_850  # a real max_energy_range_uj value on Intel client CPUs


def zone(root: Path, zone_id: str, name: str, energy: int, max_range: int = MAX,
         nested_in: str | None = None) -> Path:
    """Create a zone the way the kernel lays it out: nested under its parent, with a
    top-level symlink for sub-zones."""
    path = (root / nested_in / zone_id) if nested_in else root / zone_id
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range}\n")
    if nested_in:
        (root / zone_id).symlink_to(path)
    return path


def set_energy(path: Path, energy: int) -> None:
    (path / "energy_uj").write_text(f"{energy}\n")


@pytest.fixture
def two_socket(tmp_path):
    root = tmp_path / "powercap"
    root.mkdir()
    (root / "intel-rapl").mkdir()  # the control-type directory, no energy_uj
    paths = {
        "package": zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core": zone(root, "intel-rapl:0:0", "core", 500_000, nested_in="intel-rapl:0"),
        "dram": zone(root, "intel-rapl:0:1", "dram", 200_000, nested_in="intel-rapl:0"),
        "package-1": zone(root, "intel-rapl:1", "package-1", 3_000_000),
        "dram-1": zone(root, "intel-rapl:1:0", "dram", 100_000, nested_in="intel-rapl:1"),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000),
    }
    mmio = root / "intel-rapl-mmio:0"  # duplicates package-0: must be ignored
    mmio.mkdir()
    (mmio / "name").write_text("package-0\n")
    (mmio / "energy_uj").write_text("1\n")
    return root, paths


def test_zone_names_normalised(two_socket):
    root, _ = two_socket
    zones = discover_zones(root)
    assert [(z.zone_id, z.component) for z in zones] == [
        ("intel-rapl:0", "package"), ("intel-rapl:0:0", "core"), ("intel-rapl:0:1", "dram"),
        ("intel-rapl:1", "package-1"), ("intel-rapl:1:0", "dram-1"), ("intel-rapl:2", "psys"),
    ]
    assert all(z.max_energy_range_uj == MAX for z in zones)


def test_deltas_in_joules(two_socket):
    root, paths = two_socket
    source = RaplSource(root)
    ok, reason = source.available()
    assert ok and reason == "ok: package, core, dram, package-1, dram-1, psys"
    assert source.read().energy_joules == {}  # baseline
    set_energy(paths["package"], 31_000_000)
    set_energy(paths["dram-1"], 2_100_000)
    reading = source.read()
    assert reading.energy_joules["package"] == pytest.approx(30.0)
    assert reading.energy_joules["dram-1"] == pytest.approx(2.0)
    assert reading.energy_joules["core"] == 0.0


def test_wrap_around_uses_max_energy_range(tmp_path):
    root = tmp_path / "powercap"
    root.mkdir()
    package = zone(root, "intel-rapl:0", "package-0", MAX - 4_000_000)
    source = RaplSource(root)
    source.read()
    set_energy(package, 6_000_000)  # wrapped past max_energy_range_uj
    assert source.read().energy_joules == {"package": pytest.approx(10.0)}
    set_energy(package, 9_000_000)
    assert source.read().energy_joules == {"package": pytest.approx(3.0)}


@pytest.mark.parametrize("previous, current, max_range, delta", [
    (10, 25, 100, 15), (90, 5, 100, 15), (100, 0, 100, 0), (50, 50, 100, 0),
    (150, 10, 100, 0),  # previous above the range: a reset we cannot account for
    (90, 5, 0, 0),
])
def test_counter_delta(previous, current, max_range, delta):
    assert counter_delta(previous, current, max_range) == delta


def test_no_tree_or_no_zones_is_unavailable(tmp_path):
    ok, reason = RaplSource(tmp_path / "missing").available()
    assert not ok and "no powercap tree" in reason
    (tmp_path / "empty").mkdir()
    ok, reason = RaplSource(tmp_path / "empty").available()
    assert not ok and "no intel-rapl zones" in reason


def test_root_only_energy_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    import daemon.sources.rapl as rapl

    root = tmp_path / "powercap"
    root.mkdir()
    zone(root, "intel-rapl:0", "package-0", 1)
    real = rapl._read_int

    def read_int(path: Path) -> int:
        # Linux 5.10+ makes energy_uj mode 0400 root; the tests may themselves run as root.
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "_read_int", read_int)
    ok, reason = RaplSource(root).available()
    assert not ok and "root only" in reason


def test_unreadable_value_fails_the_read(tmp_path):
    from daemon.sources.base import SourceError

    root = tmp_path / "powercap"
    root.mkdir()
    package = zone(root, "intel-rapl:0", "package-0", 1)
    source = RaplSource(root)
    source.read()
    (package / "energy_uj").write_text("garbage\n")
    with pytest.raises(SourceError, match="intel-rapl:0"):
        source.read()
