"""Linux RAPL energy counters through the powercap sysfs tree, read zone by zone.

Each zone `/sys/class/powercap/intel-rapl:P[:S]/` has `name` (`package-0`, `core`, `uncore`,
`dram`, `psys`, or `package-P-die-D` on multi-die parts), `energy_uj` (a counter in µJ) and
`max_energy_range_uj` (where the counter wraps to 0). Zone ids are hexadecimal in the kernel
(`intel-rapl:a` is the eleventh). `intel-rapl-mmio` zones duplicate the package counter and are
skipped. AMD CPUs expose the same `intel-rapl` interface.

Components (label `component`, and the device name in `soakd_device_up`):
- a top-level zone keeps its name, except that `package-0` is `package` (the common single
  socket): `package`, `package-1`, `psys`, and multi-die names whole (`package-1-die-3`);
- a sub-zone is its own name with its package's suffix: `core`, `dram` under package 0,
  `dram-1` under package 1, `core-1-die-3` under `package-1-die-3`.
A name still taken gets the zone id appended, so components are always unique.

Containment (daemon/energy.py): `psys` contains every package and DRAM zone; a package
contains its `core` and `uncore` zones (DRAM is a separate domain).

Per-zone isolation: since Linux 5.10 (CVE-2020-8694, "Platypus") `energy_uj` is root-only,
and a common non-root set-up makes only the package counter world-readable. A zone that cannot
be read is skipped with its reason (`soakd_reading_unavailable`, the source's reason) and the
readable ones still count; no readable zone at all makes the source unavailable. A zone whose
`max_energy_range_uj` cannot be read has wrap handling off, said in the source's reason and
as a lasting issue (`soakd_reading_unavailable{reading="max_energy_range"}`, journaled and
logged by the daemon): a counter that goes back is then always a reset. A counter that goes back is a wrap
only when the energy that implies is plausible for the interval (daemon/sources/counters.py);
otherwise a reset, counted in `Reading.counter_resets`, and nothing is added.

`root`, the clock and the file reader are injectable so tests use fake trees and fake users.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from daemon.sources.base import DeviceStatus, Reading, ReadingIssue, Source, SourceError, error_slug, label_value
from daemon.sources.counters import counter_step
from daemon.sources.registry import SourceOption, SourceSpec, parse_str, register

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE_ID = re.compile(r"^intel-rapl:([0-9a-f]+)(?::([0-9a-f]+))?$")
_PACKAGE = re.compile(r"^package-(\d+)$")
Reader = Callable[[Path], str]


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone; `max_energy_range_uj` None when it could not be read (no wrap)."""

    zone_id: str  # e.g. intel-rapl:0:2
    component: str  # e.g. dram
    path: Path
    max_energy_range_uj: int | None
    range_error: str | None = None  # why max_energy_range_uj is unknown


def _read_text(path: Path) -> str:
    return path.read_text()


def _read_int(path: Path, reader: Reader = _read_text) -> int:
    return int(reader(path).strip())


def _zone_key(zone_id: str) -> list[int]:
    return [int(part, 16) for part in zone_id.split(":")[1:]]


def zone_component(name: str, parent_name: str | None) -> str:
    """The component of a zone named `name` whose top-level zone is named `parent_name`
    (None for a top-level zone); see the module docstring."""
    if parent_name is None:
        return label_value("package" if name == "package-0" else name)
    suffix = parent_name[len("package-"):] if parent_name.startswith("package-") else parent_name
    return label_value(name if suffix in ("0", "") else f"{name}-{suffix}")


def discover_zones(root: str | Path = DEFAULT_ROOT, reader: Reader = _read_text) -> list[RaplZone]:
    """All energy zones under `root` (top-level entries and nested sub-zones, once each), in
    zone-id order. A zone whose name cannot be read is named after its id."""
    base = Path(root)
    found: dict[str, Path] = {}
    for entry in sorted(base.glob("intel-rapl:*")) + sorted(base.glob("intel-rapl:*/intel-rapl:*")):
        if _ZONE_ID.match(entry.name) and (entry / "energy_uj").exists():
            found.setdefault(entry.name, entry)
    names: dict[str, str] = {}
    for zone_id, path in found.items():
        try:
            names[zone_id] = reader(path / "name").strip()
        except (OSError, UnicodeDecodeError):
            names[zone_id] = zone_id.replace(":", "-")
    zones = []
    used: set[str] = set()
    for zone_id in sorted(found, key=_zone_key):
        match = _ZONE_ID.match(zone_id)
        assert match is not None
        parent = None if match[2] is None else names.get(f"intel-rapl:{match[1]}", f"package-{int(match[1], 16)}")
        component = zone_component(names[zone_id], parent)
        if component in used:
            component = label_value(f"{component}-{zone_id.split(':', 1)[1].replace(':', '-')}")
        used.add(component)
        try:
            max_range: int | None = _read_int(found[zone_id] / "max_energy_range_uj", reader)
            range_error = None
        except (OSError, ValueError) as exc:
            max_range, range_error = None, error_slug(exc)
        zones.append(RaplZone(zone_id, component, found[zone_id], max_range or None,
                              range_error or (None if max_range else "zero")))
    return zones


def rapl_energy_parts(components: Collection[str]) -> dict[str, str]:
    """part -> total among RAPL components: core/uncore in their package, packages and DRAM in
    psys (see daemon/energy.py)."""
    present = set(components)
    parts: dict[str, str] = {}
    for component in present:
        base, _, suffix = component.partition("-")
        if base in ("core", "uncore"):
            package = f"package-{suffix}" if suffix else "package"
            if package in present:
                parts[component] = package
            elif "psys" in present:
                parts[component] = "psys"
        elif base in ("package", "dram") and "psys" in present:
            parts[component] = "psys"
    return parts


class RaplSource(Source):
    """CPU package / DRAM / core / psys energy from RAPL, as deltas between reads.

    Each zone's `energy_uj` counter (µJ) is read and the change since the previous read is
    reported in joules; a zone's first read only sets its baseline. `root` is the powercap
    sysfs tree, `reader` reads a file's text and `clock` is the monotonic clock (all three
    injectable for tests).
    """

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_ROOT, reader: Reader = _read_text,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self._reader = reader
        self._clock = clock
        self._zones: list[RaplZone] | None = None
        self._skipped: dict[str, tuple[RaplZone, str, str]] = {}  # zone id -> (zone, slug, detail)
        self._last: dict[str, tuple[int, float]] = {}  # zone id -> (µJ, clock)

    def _probe_zones(self) -> list[RaplZone]:
        zones = discover_zones(self.root, self._reader)
        self._skipped = {}
        readable = []
        for zone in zones:
            try:
                _read_int(zone.path / "energy_uj", self._reader)
            except (OSError, ValueError) as exc:
                self._skipped[zone.zone_id] = (zone, error_slug(exc), str(exc))
                continue
            readable.append(zone)
        self._zones = readable
        return readable

    def available(self) -> tuple[bool, str]:
        """Up when at least one zone's energy_uj can be read; the reason lists the zones read,
        those skipped and those without wrap handling."""
        if not self.root.is_dir():
            return False, f"unavailable: no powercap tree at {self.root} (not Linux, or no RAPL)"
        zones = self._probe_zones()  # rediscover: modules may have been loaded since
        if not zones and not self._skipped:
            return False, f"unavailable: no intel-rapl zones under {self.root}"
        if not zones:
            slugs = {slug for _z, slug, _d in self._skipped.values()}
            if slugs == {"permission_denied"}:
                return False, ("unavailable: energy_uj is readable by root only (Linux 5.10+, "
                               "CVE-2020-8694); run as root or grant read access")
            first = next(iter(self._skipped.values()))
            return False, f"unavailable: cannot read {first[0].path / 'energy_uj'}: {first[2]}"
        reason = f"ok: {', '.join(z.component for z in zones)}"
        no_wrap = [z.component for z in zones if z.max_energy_range_uj is None]
        if no_wrap:
            reason += (f"; wrap range unknown for {', '.join(no_wrap)} (max_energy_range_uj "
                       "unreadable): wrap-around not handled, a counter going back is a reset")
        if self._skipped:
            reason += "; skipped: " + ", ".join(f"{z.component} ({slug.replace('_', ' ')})"
                                                for z, slug, _d in self._skipped.values())
        return True, reason

    def _state(self, reading: Reading, zones: list[RaplZone]) -> None:
        for zone, slug, detail in self._skipped.values():
            reading.devices[zone.component] = DeviceStatus(False, f"{slug}: {detail}")
            reading.issues.append(ReadingIssue(zone.component, "energy", slug, detail, lasting=True))
        for zone in zones:
            if zone.max_energy_range_uj is None:
                reading.issues.append(ReadingIssue(
                    zone.component, "max_energy_range", zone.range_error or "unknown",
                    "max_energy_range_uj unreadable: wrap-around not handled", lasting=True))

    def read(self) -> Reading:
        """Energy deltas of every readable zone; a zone that fails is left out with its reason.
        Raises SourceError only when no zone could be read at all."""
        zones = self._zones if self._zones is not None else self._probe_zones()
        if not zones:
            raise SourceError(f"no readable intel-rapl zone under {self.root}")
        reading = Reading()
        self._state(reading, zones)
        now = self._clock()
        failed = []
        for zone in zones:
            try:
                current = _read_int(zone.path / "energy_uj", self._reader)
            except (OSError, ValueError) as exc:
                slug = error_slug(exc)
                failed.append(f"{zone.zone_id}: {exc}")
                reading.devices[zone.component] = DeviceStatus(False, f"{slug}: {exc}")
                reading.issues.append(ReadingIssue(zone.component, "energy", slug, str(exc)))
                self._last.pop(zone.zone_id, None)  # the next read sets a new baseline
                continue
            reading.devices[zone.component] = DeviceStatus(True, "ok")
            previous = self._last.get(zone.zone_id)
            self._last[zone.zone_id] = (current, now)
            if previous is None:
                continue
            step = counter_step(previous[0], current, zone.max_energy_range_uj, now - previous[1],
                                joules_per_unit=1e-6)
            if step.kind == "reset":
                reading.counter_resets[zone.component] = 1
            reading.energy_joules[zone.component] = step.delta / 1e6
        if len(failed) == len(zones):
            raise SourceError("; ".join(failed))
        return reading


register(SourceSpec(
    name="rapl", description="Linux CPU package, core, DRAM and platform (psys) energy (powercap)",
    build=lambda options: RaplSource(options.get("rapl_root") or DEFAULT_ROOT),
    platforms=("linux",), order=40, energy_parts=rapl_energy_parts,
    options=(SourceOption("rapl_root", parse_str, "the powercap sysfs tree (default /sys/class/powercap)"),)))
