"""Linux RAPL energy counters through the powercap sysfs tree.

Each zone `/sys/class/powercap/intel-rapl:P[:S]/` has `name` (`package-0`, `core`, `uncore`,
`dram`, `psys`), `energy_uj` (a counter in µJ) and `max_energy_range_uj` (where the counter
wraps to 0). Components: package P's zones are `package`, `core`, `dram`... for P = 0 and
`package-1`, `dram-1`... for P = 1; `psys` stays `psys`. `intel-rapl-mmio` zones duplicate
the package counter and are skipped. AMD CPUs expose the same `intel-rapl` interface.

Since Linux 5.10 (CVE-2020-8694, "Platypus") `energy_uj` is readable by root only: that is
reported by `available()` as a reason. `root` is injectable so tests use a fake tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from daemon.sources.base import Reading, Source, SourceError, label_value

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE_ID = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_NUMBERED = re.compile(r"^(.*?)-(\d+)$")


@dataclass(frozen=True)
class RaplZone:
    zone_id: str  # e.g. intel-rapl:0:2
    component: str  # e.g. dram
    path: Path
    max_energy_range_uj: int


def counter_delta(previous: int, current: int, max_range: int) -> int:
    """µJ between two counter readings, across at most one wrap at `max_range`."""
    if current >= previous:
        return current - previous
    if max_range <= 0 or previous > max_range:
        return 0  # counter reset we cannot account for: count nothing rather than nonsense
    return max_range - previous + current


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def discover_zones(root: str | Path = DEFAULT_ROOT) -> list[RaplZone]:
    """All energy zones under `root` (top-level entries and nested sub-zones, once each)."""
    base = Path(root)
    found: dict[str, Path] = {}
    for entry in sorted(base.glob("intel-rapl:*")) + sorted(base.glob("intel-rapl:*/intel-rapl:*")):
        if _ZONE_ID.match(entry.name) and (entry / "energy_uj").exists():
            found.setdefault(entry.name, entry)
    names: dict[str, str] = {}
    for zone_id, path in found.items():
        try:
            names[zone_id] = (path / "name").read_text().strip()
        except OSError:
            names[zone_id] = zone_id
    zones = []
    used: set[str] = set()
    for zone_id in sorted(found, key=lambda z: [int(n) for n in re.findall(r"\d+", z)]):
        match = _ZONE_ID.match(zone_id)
        assert match is not None
        name = names[zone_id]
        numbered = _NUMBERED.match(name)
        base_name = numbered[1] if numbered else name
        if match[2] is None:
            package = int(numbered[2]) if numbered and base_name == "package" else None
        else:  # a sub-zone belongs to its parent's package
            parent = _NUMBERED.match(names.get(f"intel-rapl:{match[1]}", ""))
            package = int(parent[2]) if parent else int(match[1])
        component = label_value(base_name if not package else f"{base_name}-{package}")
        if component in used:
            component = label_value(f"{component}-{zone_id.split(':', 1)[1].replace(':', '-')}")
        used.add(component)
        try:
            max_range = _read_int(found[zone_id] / "max_energy_range_uj")
        except (OSError, ValueError):
            max_range = 0
        zones.append(RaplZone(zone_id, component, found[zone_id], max_range))
    return zones


class RaplSource(Source):
    """CPU package / DRAM / core energy from RAPL, as deltas between reads."""

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self._zones: list[RaplZone] | None = None
        self._last: dict[str, int] = {}

    def _get_zones(self) -> list[RaplZone]:
        if self._zones is None:
            self._zones = discover_zones(self.root)
        return self._zones

    def available(self) -> tuple[bool, str]:
        if not self.root.is_dir():
            return False, f"unavailable: no powercap tree at {self.root} (not Linux, or no RAPL)"
        self._zones = None  # rediscover: modules may have been loaded since
        zones = self._get_zones()
        if not zones:
            return False, f"unavailable: no intel-rapl zones under {self.root}"
        try:
            _read_int(zones[0].path / "energy_uj")
        except PermissionError:
            return False, ("unavailable: energy_uj is readable by root only (Linux 5.10+, "
                           "CVE-2020-8694); run as root or grant read access")
        except (OSError, ValueError) as exc:
            return False, f"unavailable: cannot read {zones[0].path / 'energy_uj'}: {exc}"
        return True, f"ok: {', '.join(z.component for z in zones)}"

    def read(self) -> Reading:
        zones = self._get_zones()
        if not zones:
            raise SourceError(f"no intel-rapl zones under {self.root}")
        reading = Reading()
        for zone in zones:
            try:
                current = _read_int(zone.path / "energy_uj")
            except (OSError, ValueError) as exc:
                raise SourceError(f"{zone.zone_id}: {exc}") from None
            previous = self._last.get(zone.zone_id)
            self._last[zone.zone_id] = current
            if previous is not None:
                delta = counter_delta(previous, current, zone.max_energy_range_uj)
                reading.energy_joules[zone.component] = delta / 1e6
        return reading
