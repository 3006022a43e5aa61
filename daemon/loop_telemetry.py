"""Per-loop telemetry for the slowdown verdict: what the sampler saw while one slice ran.

A loop is one slice of one series (phase x backend x precision x device). `LoopWindow` takes
the sampler's snapshot at the slice's start, every new sampler tick while it runs (the
recorder offers the latest snapshot at each step report; a tick is taken once), and the
snapshot at its end, and `finish()` turns them into a `daemon.verdicts.LoopTelemetry`:

- throttled seconds per reason: the difference of `Snapshot.throttled_seconds_total` between
  start and end (daemon/throttle.py; host-wide: NVML reports the union of its GPUs' reasons);
- the highest thermal-pressure level: every level whose seconds grew, and the level at the end;
- the device's clock: the mean of `Snapshot.clock_hertz[key]` over the ticks in the slice and
  its end (the start snapshot belongs to whatever ran before);
- the device's power: its energy counter over the slice's measured segments
  (`Sampler.energy_over`) divided by the measured seconds; for a device with no counter of its
  own, the whole system's energy over that time; where no counter exists at all, the mean of
  the instantaneous readings over the ticks;
- the device's power limit (NVML) and temperature at the end.

Which readings belong to a device is `device_keys(backend, device)`: `cuda` device i is NVML's
`gpu{i}` (the same index; a CUDA_VISIBLE_DEVICES that renumbers GPUs would mismatch them), `mps`
and `coreml-gpu` powermetrics' `gpu`, `coreml-ane` its `ane`, the CPU backends its `cpu` (on
Linux the CPU has no clock or temperature source here, and its power is the whole system's).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.energy import IntervalEnergy
from daemon.levels import LEVELS
from daemon.snapshot import Snapshot
from daemon.verdicts import LoopTelemetry

Key = tuple[str, str]  # (source, name) as in the snapshot's tables


@dataclass(frozen=True)
class DeviceKeys:
    """Where one device's readings sit in a snapshot (None: no such reading for it)."""

    clock: Key | None = None  # Snapshot.clock_hertz
    energy: Key | None = None  # Snapshot.energy_joules / power_watts
    limit: Key | None = None  # Snapshot.power_limit_watts
    temperature: Key | None = None  # Snapshot.temperatures_celsius


def device_keys(backend: str, device: str) -> DeviceKeys:
    """The snapshot keys of `device` (its index within `backend`); see the module docstring."""
    if backend == "cuda":
        name = f"gpu{device}"
        return DeviceKeys(("nvml", f"{name}_sm"), ("nvml", name), ("nvml", name), ("nvml", name))
    if backend in ("mps", "coreml-gpu"):
        return DeviceKeys(clock=("powermetrics", "gpu"), energy=("powermetrics", "gpu"))
    if backend == "coreml-ane":
        return DeviceKeys(energy=("powermetrics", "ane"))
    return DeviceKeys(clock=("powermetrics", "cpu"))


class LoopWindow:
    """The telemetry of one slice while it runs (see the module docstring). Not thread-safe: the
    recorder's thread owns it."""

    def __init__(self, start: Snapshot, keys: DeviceKeys) -> None:
        self.start = start
        self.keys = keys
        self._last_tick = start.monotonic
        self._clocks: list[float] = []
        self._power: list[float] = []

    def add(self, snapshot: Snapshot) -> None:
        """A snapshot seen while the slice runs; counted once per sampler tick."""
        if snapshot.monotonic <= self._last_tick:
            return
        self._last_tick = snapshot.monotonic
        keys = self.keys
        if keys.clock is not None and keys.clock in snapshot.clock_hertz:
            self._clocks.append(snapshot.clock_hertz[keys.clock])
        if keys.energy is not None and keys.energy in snapshot.power_watts:
            self._power.append(snapshot.power_watts[keys.energy])

    def finish(self, end: Snapshot, energy: IntervalEnergy | None, measured_seconds: float) -> LoopTelemetry:
        """The loop's telemetry, from the slice's end snapshot and the energy of its measured
        segments (`Sampler.energy_over(result.segments)`, None when not known)."""
        self.add(end)
        start = self.start
        throttled: dict[str, float] = {}
        for (source, reason), seconds in end.throttled_seconds_total.items():
            used = seconds - start.throttled_seconds_total.get((source, reason), 0.0)
            if used > 0 or (source, reason) in end.throttle_active or (source, reason) in start.throttle_active:
                throttled[reason] = throttled.get(reason, 0.0) + max(0.0, used)
        levels = [level for level, seconds in end.thermal_seconds_total.items()
                  if seconds - start.thermal_seconds_total.get(level, 0.0) > 0]
        if end.thermal_pressure is not None:
            levels.append(end.thermal_pressure)
        known = [level for level in levels if level in LEVELS]
        keys = self.keys
        return LoopTelemetry(
            seconds=max(0.0, end.monotonic - start.monotonic),
            throttle_seconds=throttled,
            throttle_known=end.throttle_known,
            thermal_level=max(known, key=LEVELS.index) if known else None,
            clock_hertz=sum(self._clocks) / len(self._clocks) if self._clocks else None,
            power_watts=self._power_watts(energy, measured_seconds),
            power_limit_watts=end.power_limit_watts.get(keys.limit) if keys.limit else None,
            temperature_celsius=end.temperatures_celsius.get(keys.temperature) if keys.temperature else None,
        )

    def _power_watts(self, energy: IntervalEnergy | None, measured_seconds: float) -> float | None:
        if energy is not None and energy.method != "none" and measured_seconds > 0:
            if self.keys.energy is not None and self.keys.energy in energy.joules:
                return energy.joules[self.keys.energy] / measured_seconds
            if self.keys.energy is None and energy.system.joules is not None:
                return energy.system.joules / measured_seconds
        return sum(self._power) / len(self._power) if self._power else None
