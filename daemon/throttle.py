"""Throttling, defined once: which reasons are throttles, and the account of them over time.

A throttle is a clock reduction imposed for power, heat or reliability:

- NVML clock-event reasons: `sw_power_cap`, `hw_slowdown`, `sw_thermal_slowdown`,
  `hw_thermal_slowdown`, `hw_power_brake_slowdown` are throttles; `gpu_idle`,
  `applications_clocks_setting`, `sync_boost`, `display_clock_setting` are not.
- macOS thermal pressure (powermetrics, the notify key, NSProcessInfo, pmset): reason
  `thermal_pressure` at `moderate` or above; `nominal` and `light` are not.
- pmset's `CPU_Speed_Limit` (Intel Macs): reason `cpu_speed_limit` below 100.

(The NVML names are nvml.h's `nvmlClocksEventReason*` names in snake case.) An H200 at full
load sits at its power cap from the first seconds: `sw_power_cap` is a throttle, and soakd says
so. An NVML bit this table does not know (`reason_0x...`) is not counted as a throttle.

Sources report the throttle reasons active now (`Reading.throttle_active`, None when they
cannot see throttling) and the ones that turned on since their last read
(`Reading.throttle_events`). The sampler's `ThrottleBook` adds the thermal pressure level,
counts events, and keeps the seconds spent throttled per (source, reason), sample-and-hold
like the thermal-pressure seconds. Whether any throttle source exists is `ThrottleBook.known`:
on a host with none, "no throttle" is unknown, not zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from daemon.levels import level_ordinal

NVML_THROTTLES = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown",
                            "hw_thermal_slowdown", "hw_power_brake_slowdown"})
NOT_THROTTLES = frozenset({"gpu_idle", "applications_clocks_setting", "sync_boost",
                           "display_clock_setting"})
THERMAL_PRESSURE = "thermal_pressure"
CPU_SPEED_LIMIT = "cpu_speed_limit"
THROTTLE_REASONS = NVML_THROTTLES | {THERMAL_PRESSURE, CPU_SPEED_LIMIT}
PRESSURE_THRESHOLD = "moderate"  # this level and above is a throttle

Key = tuple[str, str]  # (source, reason)


def is_throttle(reason: str) -> bool:
    """True for the reasons in the table above."""
    return reason in THROTTLE_REASONS


def throttles(reasons: Iterable[str]) -> frozenset[str]:
    """The throttle reasons among `reasons`."""
    return frozenset(r for r in reasons if is_throttle(r))


def pressure_throttles(level: str | None) -> bool:
    """Thermal pressure `level` (daemon/levels.py) is moderate or above."""
    ordinal = level_ordinal(level)
    threshold = level_ordinal(PRESSURE_THRESHOLD)
    return ordinal is not None and threshold is not None and ordinal >= threshold


def speed_limit_throttles(limit: int | None) -> bool:
    """pmset's CPU_Speed_Limit (percent of nominal clock) is below 100."""
    return limit is not None and limit < 100


class ThrottleBook:
    """Throttle state, events and seconds for the sampler, updated once per tick.

    `update(now, readings, level, level_source)`: `readings` maps each source that was read
    successfully this tick to its (throttle_active, throttle_events); `level` is the thermal
    pressure level the sampler chose and `level_source` the source it came from. A pressure
    escalation (the level rising to a level at or above moderate) counts one
    `thermal_pressure` event for that source. Seconds: the time since the previous tick is
    credited to the reasons active at the previous tick.
    """

    def __init__(self) -> None:
        self.events_total: dict[Key, int] = {}
        self.seconds_total: dict[Key, float] = {}
        self.active: frozenset[Key] = frozenset()
        self.known = False
        self.sources: frozenset[str] = frozenset()  # sources that can see throttling now
        self._last_tick: float | None = None
        self._last_ordinal: int | None = None

    def update(self, now: float,
               readings: Mapping[str, tuple[frozenset[str] | None, Mapping[str, int]]],
               level: str | None, level_source: str | None) -> None:
        """Account one tick; see the class docstring."""
        if self._last_tick is not None:
            elapsed = max(0.0, now - self._last_tick)
            for key in self.active:
                self.seconds_total[key] = self.seconds_total.get(key, 0.0) + elapsed
        self._last_tick = now
        active: set[Key] = set()
        seeing: set[str] = set()
        for source, (reasons, events) in readings.items():
            if reasons is not None:
                seeing.add(source)
                active.update((source, r) for r in throttles(reasons))
            for reason, count in events.items():
                if is_throttle(reason) and count > 0:
                    self._count((source, reason), count)
        ordinal = level_ordinal(level)
        if level_source is not None and level is not None:
            seeing.add(level_source)
            if pressure_throttles(level):
                active.add((level_source, THERMAL_PRESSURE))
                if self._last_ordinal is None or (ordinal is not None and ordinal > self._last_ordinal):
                    self._count((level_source, THERMAL_PRESSURE), 1)
        if ordinal is not None:  # a tick without a level is not a de-escalation
            self._last_ordinal = ordinal
        for key in active:
            self.seconds_total.setdefault(key, 0.0)
        self.active = frozenset(active)
        self.sources = frozenset(seeing)
        self.known = bool(seeing)

    def _count(self, key: Key, count: int) -> None:
        self.events_total[key] = self.events_total.get(key, 0) + count
