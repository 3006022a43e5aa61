"""RAPL on fake powercap trees: zone naming, deltas, wrap vs reset, per-zone permissions, and the
two RAPL field reports (tests/fixtures/field-reports)."""

from __future__ import annotations

from pathlib import Path

import pytest
from powercap_tree import parse_sysfs_report, unprivileged_reader, write_snapshot

from daemon.energy import breakdown
from daemon.sources.counters import counter_step
from daemon.sources.rapl import RaplSource, discover_zones, rapl_energy_parts

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
    assert {z.zone_id: z.max_energy_range_uj for z in discover_zones(root)}["intel-rapl:2"] == MAX
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
    clock = [0.0]
    source = RaplSource(root, clock=lambda: clock[0])
    source.read()
    clock[0] = 1.0
    set_energy(package, 6_000_000)  # wrapped past max_energy_range_uj: 10 J in 1 s is plausible
    reading = source.read()
    assert reading.energy_joules == {"package": pytest.approx(10.0)} and reading.counter_resets == {}
    clock[0] = 2.0
    set_energy(package, 9_000_000)
    assert source.read().energy_joules == {"package": pytest.approx(3.0)}


@pytest.mark.parametrize("previous, current, max_range, delta, kind", [
    (10, 25, 100, 15, "step"), (90, 5, 100, 15, "wrap"), (100, 0, 100, 0, "wrap"),
    (50, 50, 100, 0, "step"),
    (150, 10, 100, 0, "reset"),  # previous above the range: not a wrap
    (90, 5, 0, 0, "reset"), (90, 5, None, 0, "reset"),  # range unknown: never a wrap
])
def test_counter_step(previous, current, max_range, delta, kind):
    step = counter_step(previous, current, max_range, 1.0, joules_per_unit=1e-6)
    assert (step.delta, step.kind) == (delta, kind)


def test_a_counter_reset_is_not_read_as_a_wrap(tmp_path):
    """Issue 12 item 6: 100 kJ back to 40 J would be a 162 kJ wrap in one 1-s tick (~162 kW)."""
    root = tmp_path / "powercap"
    root.mkdir()
    package = zone(root, "intel-rapl:0", "package-0", 100_000_000_000)  # 100 kJ
    clock = [0.0]
    source = RaplSource(root, clock=lambda: clock[0])
    source.read()
    clock[0] = 1.0
    set_energy(package, 40_000_000)  # 40 J
    reading = source.read()
    assert reading.energy_joules == {"package": 0.0}
    assert reading.counter_resets == {"package": 1}
    clock[0] = 2.0
    set_energy(package, 90_000_000)
    assert source.read().energy_joules == {"package": pytest.approx(50.0)}  # counts on from the reset
    # the same wrap over a long enough interval is plausible, and accepted
    assert counter_step(100_000_000_000, 40_000_000, MAX, 600.0, joules_per_unit=1e-6).kind == "wrap"


def test_no_tree_or_no_zones_is_unavailable(tmp_path):
    ok, reason = RaplSource(tmp_path / "missing").available()
    assert not ok and "no powercap tree" in reason
    (tmp_path / "empty").mkdir()
    ok, reason = RaplSource(tmp_path / "empty").available()
    assert not ok and "no intel-rapl zones" in reason


def test_root_only_energy_is_unavailable_with_the_reason(tmp_path):
    root = tmp_path / "powercap"
    root.mkdir()
    zone(root, "intel-rapl:0", "package-0", 1)

    def reader(path: Path) -> str:
        # Linux 5.10+ makes energy_uj mode 0400 root; the tests may themselves run as root.
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    ok, reason = RaplSource(root, reader=reader).available()
    assert not ok and "root only" in reason


def test_unreadable_zone_is_left_out_and_the_others_count(two_socket):
    from daemon.sources.base import SourceError

    root, paths = two_socket
    source = RaplSource(root)
    source.read()
    (paths["dram"] / "energy_uj").write_text("garbage\n")
    set_energy(paths["package"], 2_000_000)
    reading = source.read()
    assert reading.energy_joules["package"] == pytest.approx(1.0)
    assert "dram" not in reading.energy_joules
    assert not reading.devices["dram"].up and reading.devices["package"].up
    [issue] = reading.issues
    assert (issue.device, issue.reading, issue.reason, issue.lasting) == ("dram", "energy", "value_error", False)
    set_energy(paths["dram"], 300_000)  # readable again: a new baseline, nothing invented
    assert "dram" not in source.read().energy_joules
    for path in paths.values():
        (path / "energy_uj").write_text("garbage\n")
    with pytest.raises(SourceError, match="intel-rapl:0"):
        source.read()


def test_hexadecimal_zone_ids(tmp_path):
    root = tmp_path / "powercap"
    root.mkdir()
    for index in range(11):  # intel-rapl:0 .. intel-rapl:a
        zone(root, f"intel-rapl:{index:x}", f"package-{index}", 1_000_000 * (index + 1))
    zone(root, "intel-rapl:a:0", "dram", 5_000, nested_in="intel-rapl:a")
    zones = discover_zones(root)
    assert [z.zone_id for z in zones][-3:] == ["intel-rapl:9", "intel-rapl:a", "intel-rapl:a:0"]
    assert [z.component for z in zones][-3:] == ["package-9", "package-10", "dram-10"]
    source = RaplSource(root)
    source.read()
    set_energy(root / "intel-rapl:a", 11_000_000 + 4_000_000)
    assert source.read().energy_joules["package-10"] == pytest.approx(4.0)


def test_multi_die_names_are_kept_whole_and_unique(tmp_path):
    """Two dies in each of two packages (AMD multi-die): package-P-die-D, with core sub-zones."""
    root = tmp_path / "powercap"
    root.mkdir()
    index = 0
    for package in (0, 1):
        for die in (0, 1):
            zone_id = f"intel-rapl:{index:x}"
            zone(root, zone_id, f"package-{package}-die-{die}", 1_000_000)
            zone(root, f"{zone_id}:0", "core", 500_000, nested_in=zone_id)
            index += 1
    components = [z.component for z in discover_zones(root)]
    assert components == ["package-0-die-0", "core-0-die-0", "package-0-die-1", "core-0-die-1",
                          "package-1-die-0", "core-1-die-0", "package-1-die-1", "core-1-die-1"]
    parts = rapl_energy_parts(components)
    assert parts == {f"core-{p}-die-{d}": f"package-{p}-die-{d}" for p in (0, 1) for d in (0, 1)}
    energy = {c: (10.0 if c.startswith("package") else 4.0) for c in components}
    assert breakdown(energy).joules == pytest.approx(40.0)  # four dies, cores inside them


# --- field reports -------------------------------------------------------------------------


def read_report_twice(field_reports_dir, tmp_path, name, reader=None):
    files = parse_sysfs_report((field_reports_dir / name).read_text())
    root = tmp_path / "powercap"
    write_snapshot(root, files, 0)
    options = {"reader": reader} if reader else {}
    source = RaplSource(root, **options)
    availability = source.available()
    first = source.read()
    write_snapshot(root, files, 1)
    return source, availability, first, source.read()


def test_field_report_laptop_psys_is_the_whole_platform(field_reports_dir, tmp_path):
    _, (ok, _), first, second = read_report_twice(field_reports_dir, tmp_path, "intel-laptop_rapl_psys.sysfs.txt")
    assert ok and first.energy_joules == {}
    assert second.energy_joules == pytest.approx({"package": 7.782410, "core": 1.420654, "uncore": 2.379089,
                                                  "dram": 4.834167, "psys": 37.189209})
    system = breakdown(second.energy_joules)
    assert system.joules == pytest.approx(37.189209)  # psys alone: it contains package and DRAM
    assert system.counted == ("psys",)
    assert system.contained == {"core": "package", "dram": "psys", "package": "psys", "uncore": "package"}


def test_field_report_non_root_desktop_reads_the_package_alone(field_reports_dir, tmp_path):
    source, (ok, reason), _, second = read_report_twice(
        field_reports_dir, tmp_path, "intel-desktop_rapl_only-package-readable.sysfs.txt", unprivileged_reader)
    assert ok
    assert second.energy_joules == {"package": pytest.approx(45.0)}
    assert "skipped: core (permission denied), uncore (permission denied)" in reason
    assert "wrap range unknown for package" in reason  # said so, not silently 0
    assert {d: s.up for d, s in second.devices.items()} == {"package": True, "core": False, "uncore": False}
    lasting = {(i.device, i.reading, i.reason) for i in second.issues if i.lasting}
    assert lasting == {("core", "energy", "permission_denied"), ("uncore", "energy", "permission_denied"),
                       ("package", "max_energy_range", "permission_denied")}
    assert [z.max_energy_range_uj for z in discover_zones(source.root, unprivileged_reader)] == [None, None, None]


def test_field_report_desktop_psys_reading_zero_uses_the_parts():
    """Some desktops report psys as 0: the parts are counted and a note says so."""
    system = breakdown({"psys": 0.0, "package": 30.0, "core": 12.0, "dram": 4.0})
    assert system.joules == pytest.approx(34.0)
    assert system.counted == ("dram", "package")
    assert system.notes == ("psys read 0 J while its parts (dram, package) read 34 J: the parts are counted",)
