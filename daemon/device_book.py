"""Per-device health, skipped readings and hardware errors, across the sampler's ticks.

The sampler hands every successful `Reading` to `DeviceBook.update`, which keeps the state
the exporter shows (`soakd_device_up`, `soakd_reading_unavailable`,
`soakd_reading_errors_total`, `soakd_hardware_errors_total`, `soakd_hardware_condition`,
`soakd_power_limit_watts`) and returns what changed as (kind, device, detail) notes, which the
sampler turns into `TelemetryEvent`s for the journal and the log:

- `device_down` / `device_up`: a device's status changed (a device first seen down counts as
  going down; one first seen up is not news);
- `reading_unavailable`: a lasting issue appeared (the reading is skipped from now on);
- `hardware_error`: a hardware error counter moved, or an XID event arrived.

Passing issues are counted only (a GPU that times out every tick must not flood the journal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.sources.base import DeviceStatus, Reading

Note = tuple[str, str | None, dict[str, Any]]  # (kind, device, detail)


@dataclass
class _SourceDevices:
    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, reading) -> slug
    hardware: dict[tuple[str, str], int] = field(default_factory=dict)
    conditions: dict[tuple[str, str], bool] = field(default_factory=dict)
    power_limits: dict[str, float] = field(default_factory=dict)


class DeviceBook:
    """Device state of every source; see the module docstring. Not thread-safe (the sampler
    calls it under its own lock)."""

    def __init__(self) -> None:
        self._sources: dict[str, _SourceDevices] = {}
        self.errors_total: dict[tuple[str, str, str, str], int] = {}  # (source, device, reading, reason)

    def update(self, source: str, reading: Reading) -> list[Note]:
        """Take one successful reading of `source`; returns the changes worth journaling."""
        book = self._sources.setdefault(source, _SourceDevices())
        notes: list[Note] = []
        for device, status in sorted(reading.devices.items()):
            before = book.devices.get(device)
            if (before is None and not status.up) or (before is not None and before.up != status.up):
                notes.append(("device_up" if status.up else "device_down", device,
                              {"reason": status.reason}))
        book.devices = dict(reading.devices)
        unavailable: dict[tuple[str, str], str] = {}
        for issue in reading.issues:
            key = (issue.device, issue.reading)
            if issue.lasting:
                unavailable[key] = issue.reason
                if key in book.unavailable:
                    continue
                notes.append(("reading_unavailable", issue.device,
                              {"reading": issue.reading, "reason": issue.reason, "detail": issue.detail}))
            count_key = (source, issue.device, issue.reading, issue.reason)
            self.errors_total[count_key] = self.errors_total.get(count_key, 0) + 1
        book.unavailable = unavailable
        for event in reading.hardware_events:
            notes.append(("hardware_error", event.device, {"kind": event.kind, "count": event.count,
                                                           "total": event.total, "detail": event.detail}))
        book.hardware = dict(reading.hardware_errors)
        book.conditions = dict(reading.hardware_conditions)
        book.power_limits = dict(reading.power_limit_watts)
        return notes

    def source_down(self, source: str) -> None:
        """The whole source is down: its devices' gauges go away (`soakd_source_up` says why)."""
        book = self._sources.get(source)
        if book is not None:
            book.devices = {}
            book.power_limits = {}
            book.conditions = {}

    def devices(self) -> dict[tuple[str, str], DeviceStatus]:
        """(source, device) -> status, for the snapshot."""
        return {(s, d): v for s, b in self._sources.items() for d, v in b.devices.items()}

    def down_summary(self, source: str) -> str:
        """"gpu1 (gpu_is_lost: GPU is lost), ..." for the source's devices that are down."""
        book = self._sources.get(source)
        if book is None:
            return ""
        return ", ".join(f"{d} ({s.reason})" for d, s in sorted(book.devices.items()) if not s.up)

    def unavailable(self) -> dict[tuple[str, str, str], str]:
        """(source, device, reading) -> reason slug, for readings skipped from now on."""
        return {(s, d, r): v for s, b in self._sources.items() for (d, r), v in b.unavailable.items()}

    def hardware(self) -> dict[tuple[str, str, str], int]:
        """(source, device, kind) -> the device's cumulative hardware error count."""
        return {(s, d, k): v for s, b in self._sources.items() for (d, k), v in b.hardware.items()}

    def conditions(self) -> dict[tuple[str, str, str], bool]:
        """(source, device, condition) -> whether it holds (row_remap_pending, ...)."""
        return {(s, d, c): v for s, b in self._sources.items() for (d, c), v in b.conditions.items()}

    def power_limits(self) -> dict[tuple[str, str], float]:
        """(source, device) -> enforced power limit in W."""
        return {(s, d): v for s, b in self._sources.items() for d, v in b.power_limits.items()}
