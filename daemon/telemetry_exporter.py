"""Prometheus exposition of the sampler's telemetry: a custom Collector over the snapshot.

`SnapshotCollector.collect()` reads the sampler's last cached `Snapshot` at scrape time, so a
scrape never touches hardware. Every family is built from daemon/metric_catalog.py (name,
type, labels, help). Families whose data is absent (no throttle source, an unsupported error
counter) are exposed without samples: absent is not zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.levels import LEVELS, level_ordinal
from daemon.metric_catalog import BY_NAME
from daemon.snapshot import Snapshot


def family(name: str) -> Any:
    """An empty metric family for catalog entry `name` (prometheus_client adds `_total`)."""
    metric = BY_NAME[name]
    if metric.kind == "counter":
        return CounterMetricFamily(metric.name.removesuffix("_total"), metric.help, labels=list(metric.labels))
    return GaugeMetricFamily(metric.name, metric.help, labels=list(metric.labels))


def _filled(name: str, samples: Iterable[tuple[tuple[str, ...], float]]) -> Any:
    metric = family(name)
    for labels, value in sorted(samples):
        metric.add_metric(list(labels), float(value))
    return metric


def _keyed(table: dict[Any, Any]) -> list[tuple[tuple[str, ...], float]]:
    """{key or key tuple: value} -> [(label tuple, float)]; booleans become 1/0."""
    return [((k if isinstance(k, tuple) else (k,)), float(v)) for k, v in table.items()]


class SnapshotCollector(Collector):
    """Telemetry from the sampler's cached snapshot, plus the host info metric.

    `snapshot()` returns the latest Snapshot (or None before the first); `extra_memory()` adds
    memory kinds the daemon knows itself (the worker's RSS and device memory).
    """

    def __init__(self, snapshot: Callable[[], Snapshot | None], info: dict[str, str],
                 extra_memory: Callable[[], dict[str, int]] = dict) -> None:
        self._snapshot = snapshot
        self._info = info
        self._extra_memory = extra_memory

    def collect(self) -> Iterator[Metric]:
        """Yield every telemetry family (see the module docstring)."""
        info = InfoMetricFamily("soakd", BY_NAME["soakd_info"].help)
        info.add_metric([], self._info)
        yield info
        snap = self._snapshot()
        if snap is None:
            return
        yield from self._energy(snap)
        yield from self._thermal(snap)
        yield from self._throttle(snap)
        yield _filled("soakd_temperature_celsius", _keyed(snap.temperatures_celsius))
        yield _filled("soakd_clock_hertz", _keyed(snap.clock_hertz))
        yield _filled("soakd_memory_bytes", _keyed({**snap.memory_bytes, **self._extra_memory()}))
        yield from self._health(snap)

    @staticmethod
    def _energy(snap: Snapshot) -> Iterator[Metric]:
        yield _filled("soakd_energy_joules_total", _keyed(snap.energy_joules))
        yield _filled("soakd_power_watts", [((s, c, snap.power_method.get((s, c), "counter")), w)
                                            for (s, c), w in snap.power_watts.items()])
        system = family("soakd_system_energy_joules_total")
        if snap.system_energy_joules is not None:
            system.add_metric([], snap.system_energy_joules)
        yield system
        plan = snap.energy_breakdown
        counted = [((s, c), 1.0 if plan is not None and c in plan.counted else 0.0)
                   for (s, c) in snap.energy_joules]
        yield _filled("soakd_energy_counted", counted if plan is not None else [])
        yield _filled("soakd_energy_counter_resets_total", _keyed(snap.energy_resets_total))
        yield _filled("soakd_source_gap_seconds_total", _keyed(snap.gap_seconds_total))
        yield _filled("soakd_power_limit_watts", _keyed(snap.power_limit_watts))

    @staticmethod
    def _thermal(snap: Snapshot) -> Iterator[Metric]:
        pressure = family("soakd_thermal_pressure")
        level_gauge = family("soakd_thermal_pressure_level")
        seconds = family("soakd_thermal_pressure_seconds_total")
        if snap.thermal_pressure is not None:
            for level in LEVELS:
                pressure.add_metric([level], 1.0 if level == snap.thermal_pressure else 0.0)
            ordinal = level_ordinal(snap.thermal_pressure)
            if ordinal is not None:
                level_gauge.add_metric([], float(ordinal))
        for level in LEVELS:
            if snap.thermal_pressure is not None or level in snap.thermal_seconds_total:
                seconds.add_metric([level], snap.thermal_seconds_total.get(level, 0.0))
        yield from (pressure, level_gauge, seconds)

    @staticmethod
    def _throttle(snap: Snapshot) -> Iterator[Metric]:
        yield _filled("soakd_throttle_events_total", _keyed(snap.throttle_events_total))
        yield _filled("soakd_throttled_seconds_total", _keyed(snap.throttled_seconds_total))
        # every reason seen so far, 1 while active, so a throttle that ends reads 0, not stale
        seen = set(snap.throttled_seconds_total) | set(snap.throttle_active)
        yield _filled("soakd_throttle_active", [(key, 1.0 if key in snap.throttle_active else 0.0)
                                                for key in seen])
        observable = family("soakd_throttle_observable")
        observable.add_metric([], 1.0 if snap.throttle_known else 0.0)
        yield observable

    @staticmethod
    def _health(snap: Snapshot) -> Iterator[Metric]:
        yield _filled("soakd_source_up", [((n,), 1.0 if h.up else 0.0) for n, h in snap.health.items()])
        yield _filled("soakd_source_errors_total", [((n,), h.errors_total) for n, h in snap.health.items()])
        yield _filled("soakd_source_read_duration_seconds",
                      [((n,), h.read_duration_seconds) for n, h in snap.health.items()])
        yield _filled("soakd_device_up", [(key, 1.0 if status.up else 0.0) for key, status in snap.devices.items()])
        yield _filled("soakd_reading_unavailable", [((*key, reason), 1.0)
                                                    for key, reason in snap.reading_unavailable.items()])
        yield _filled("soakd_reading_errors_total", _keyed(snap.reading_errors_total))
        yield _filled("soakd_hardware_errors_total", _keyed(snap.hardware_errors_total))
        yield _filled("soakd_hardware_condition", _keyed(snap.hardware_conditions))
