"""The sampler's published records: the snapshot, per-source health, telemetry events.

Defined once here and read by the exporter (scrape time), the service (journal, log, the
stability tracker) and `soakd status`. A `Snapshot` is never mutated after it is published.
Keys are tuples whose first item is the source name (label `source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.energy import EnergyBreakdown
from daemon.sources.base import DeviceStatus


@dataclass(frozen=True)
class SourceHealth:
    """One source's state for the exporter's `soakd_source_*` metrics."""

    name: str
    up: bool  # available and its last read succeeded
    reason: str  # "ok..." or why it is down; devices that are down are named after "ok"
    last_error: str | None  # most recent read error, kept after recovery
    errors_total: int
    reads_total: int  # successful reads
    read_duration_seconds: float  # duration of the last read attempt


@dataclass(frozen=True)
class TelemetryEvent:
    """Something the daemon should journal and log, stamped by the sampler.

    Kinds: `device_down` / `device_up` (detail: reason), `hardware_error` (detail: kind, count,
    total, detail: a hardware error counter of a device moved, or an XID event arrived),
    `reading_unavailable` (detail: reading, reason, detail: a reading is skipped from now on),
    `energy_reset` (detail: component: a counter went back, nothing was added), `gap` (detail:
    seconds, start, end: time the source could not measure), `source_note` (detail: note: a
    one-off fact, e.g. a powermetrics child replaced for its size), `energy_plan` (detail:
    counted, description: which components make the whole-system energy changed). `seq` increases by
    one per event, so a reader journals the ones after the last seq it saw; `monotonic` is
    time.monotonic() at the tick (to match against phase boundaries), `time` the unix time.
    """

    seq: int
    time: float
    monotonic: float
    kind: str
    source: str
    device: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    """Everything the sampler knows at one tick. Never mutated after it is published.

    Energy and power are per (source, component); `system_energy_joules` is the whole-system
    energy since the sampler started, accumulated tick by tick with daemon/energy.breakdown
    (no rail counted twice), and `energy_breakdown` says which components it counts now.
    Throttling (daemon/throttle.py): `throttle_active` holds the (source, reason) pairs active
    now, `throttle_known` whether any up source can see throttling at all (False: "no
    throttle" is unknown here, not zero).
    """

    time: float  # unix time of the sample
    monotonic: float
    # (source, component) -> cumulative J since sampler start; monotonic, wrap handled
    energy_joules: dict[tuple[str, str], float]
    # (source, component) -> W over the source's last energy interval (ΔE/Δt; see Sampler)
    power_watts: dict[tuple[str, str], float]
    temperatures_celsius: dict[tuple[str, str], float]  # (source, sensor)
    thermal_pressure: str | None  # canonical level (daemon/levels.py), best source
    thermal_seconds_total: dict[str, float]  # level -> seconds at that level since start
    throttle_events_total: dict[tuple[str, str], int]  # (source, reason), throttles only
    clock_hertz: dict[tuple[str, str], float]  # (source, domain)
    memory_bytes: dict[str, int]  # kind -> bytes
    health: dict[str, SourceHealth]
    # (source, component) -> "counter" (ΔE/Δt of an energy counter or measured window) or
    # "instantaneous" (the device's instantaneous power: an estimate, used without a counter)
    power_method: dict[tuple[str, str], str] = field(default_factory=dict)
    energy_resets_total: dict[tuple[str, str], int] = field(default_factory=dict)
    system_energy_joules: float | None = None
    energy_breakdown: EnergyBreakdown | None = None  # of the cumulative component energy
    throttle_active: frozenset[tuple[str, str]] = frozenset()
    throttle_known: bool = False
    throttled_seconds_total: dict[tuple[str, str], float] = field(default_factory=dict)
    devices: dict[tuple[str, str], DeviceStatus] = field(default_factory=dict)
    # (source, device, reading) -> reason slug, for readings skipped from now on
    reading_unavailable: dict[tuple[str, str, str], str] = field(default_factory=dict)
    reading_errors_total: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    hardware_errors_total: dict[tuple[str, str, str], int] = field(default_factory=dict)
    hardware_conditions: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    power_limit_watts: dict[tuple[str, str], float] = field(default_factory=dict)
    gap_seconds_total: dict[str, float] = field(default_factory=dict)
    events: tuple[TelemetryEvent, ...] = ()
