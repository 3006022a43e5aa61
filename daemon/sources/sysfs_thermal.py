"""Linux temperatures: /sys/class/thermal zones and psutil.sensors_temperatures() (hwmon).

Thermal zones: `thermal_zoneN/type` names the sensor (`x86_pkg_temp`, `acpitz`, ...) and
`thermal_zoneN/temp` is in millidegrees Celsius. Sensor names are `zone_{type}`, made unique
with the zone number when two zones share a type (`zone_acpitz_0`). psutil sensors are named
`{chip}_{label}` (or `{chip}_{index}` for unlabelled ones). Both `root` and the psutil
function are injectable for tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.sources.base import Reading, Source, SourceError, label_value
from daemon.sources.registry import SourceOption, SourceSpec, parse_str, register

DEFAULT_ROOT = "/sys/class/thermal"
_ZONE = re.compile(r"^thermal_zone(\d+)$")


def read_thermal_zones(root: str | Path = DEFAULT_ROOT) -> dict[str, float]:
    """sensor -> °C for every readable zone (unreadable or disabled zones are skipped)."""
    zones: list[tuple[int, str, float]] = []
    for entry in Path(root).glob("thermal_zone*"):
        match = _ZONE.match(entry.name)
        if not match:
            continue
        try:
            kind = (entry / "type").read_text().strip() or entry.name
            millidegrees = int((entry / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # some zones return EIO/ENODATA while their device sleeps
        zones.append((int(match[1]), label_value(kind), millidegrees / 1000.0))
    counts: dict[str, int] = {}
    for _, kind, _ in zones:
        counts[kind] = counts.get(kind, 0) + 1
    return {(kind if counts[kind] == 1 else f"{kind}_{number}"): celsius
            for number, kind, celsius in sorted(zones)}


def psutil_temperatures(sensors: dict[str, list[Any]]) -> dict[str, float]:
    """Flatten psutil.sensors_temperatures() output to sensor -> °C."""
    out: dict[str, float] = {}
    for chip, entries in sorted(sensors.items()):
        for index, entry in enumerate(entries):
            label = getattr(entry, "label", "") or str(index)
            current = getattr(entry, "current", None)
            if current is None:
                continue
            name = label_value(f"{chip}_{label}")
            if name in out:
                name = f"{name}_{index}"
            out[name] = float(current)
    return out


def _default_sensors() -> dict[str, list[Any]]:
    import psutil

    function = getattr(psutil, "sensors_temperatures", None)  # absent on macOS/Windows
    return function() if function else {}


class SysfsThermalSource(Source):
    """Thermal-zone and hwmon temperatures, in °C.

    `root` is the thermal sysfs tree (zones are named `zone_{type}`); `sensors` returns
    psutil.sensors_temperatures()-shaped data (None reads zones only).
    """

    name = "sysfs_thermal"

    def __init__(self, root: str | Path = DEFAULT_ROOT,
                 sensors: Callable[[], dict[str, list[Any]]] | None = _default_sensors) -> None:
        self.root = Path(root)
        self._sensors = sensors

    def _collect(self) -> dict[str, float]:
        temperatures = {f"zone_{k}": v for k, v in read_thermal_zones(self.root).items()}
        if self._sensors is not None:
            try:
                found = self._sensors()
            except Exception as exc:  # psutil wraps many OS errors; report, don't crash
                raise SourceError(f"psutil.sensors_temperatures: {exc}") from None
            temperatures.update(psutil_temperatures(found))
        return temperatures

    def available(self) -> tuple[bool, str]:
        """(True, "ok: N sensor(s)"), or (False, why) when psutil fails or nothing is found."""
        try:
            found = self._collect()
        except SourceError as exc:
            return False, f"unavailable: {exc}"
        if not found:
            return False, f"unavailable: no thermal zones under {self.root} and no hwmon sensors"
        return True, f"ok: {len(found)} sensor(s)"

    def read(self) -> Reading:
        """`temperatures_celsius` by sensor name; raises SourceError when psutil fails (an
        unreadable zone is only left out)."""
        return Reading(temperatures_celsius=self._collect())


register(SourceSpec(
    name="sysfs_thermal", description="Linux temperatures: /sys/class/thermal zones and hwmon (psutil)",
    build=lambda options: SysfsThermalSource(options.get("thermal_root") or DEFAULT_ROOT),
    platforms=("linux",), enabled_by="thermal_root", order=50,
    options=(SourceOption("thermal_root", parse_str, "the thermal sysfs tree (default /sys/class/thermal)"),)))
