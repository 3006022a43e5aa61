"""Prometheus exposition: workload instruments updated live, telemetry read from a cache.

`WorkloadMetrics` turns the worker's events into counters, the step-latency histogram and
the stability gauges. `SnapshotCollector` (daemon/telemetry_exporter.py, re-exported here) is
a custom Collector that reads the sampler's last snapshot at scrape time, so a scrape never
touches hardware.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.energy import system_energy
from daemon.metric_catalog import BY_NAME, MetricDef
from daemon.stability import StabilityTracker
from daemon.telemetry_exporter import SnapshotCollector

__all__ = ["SnapshotCollector", "WorkloadMetrics"]

STEP_BUCKETS = (2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
ROTATION_BUCKETS = (1, 5, 15, 30, 60, 300, 600, 1200, 1800, 3600, 5400, 7200, 14400)
Key = tuple[str, str, str]


def _base(metric: MetricDef) -> str:
    """prometheus_client adds `_total` to counters itself."""
    return metric.name[: -len("_total")] if metric.kind == "counter" else metric.name


def _instrument(registry: CollectorRegistry, name: str, **kwargs: Any) -> Any:
    metric = BY_NAME[name]
    kinds: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    return kinds[metric.kind](_base(metric), metric.help, list(metric.labels), registry=registry,
                              **kwargs)


class WorkloadMetrics:
    """Live workload instruments; `handle()` is the rotation's event callback."""

    def __init__(self, registry: CollectorRegistry, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        i = lambda name, **kw: _instrument(registry, name, **kw)  # noqa: E731
        self.steps = i("soakd_steps_total")
        self.flop = i("soakd_flop_total")
        self.step_duration = i("soakd_step_duration_seconds", buckets=STEP_BUCKETS)
        self.failures = i("soakd_step_failures_total")
        self.fallbacks = i("soakd_fallbacks_total")
        self.checks = i("soakd_numeric_checks_total")
        self.mismatches = i("soakd_numeric_mismatches_total")
        self.relative_error = i("soakd_numeric_relative_error")
        self.active = i("soakd_phase_active")
        self.throughput = i("soakd_throughput_flop_per_second")
        self.sustained = i("soakd_sustained_ratio")
        self.variation = i("soakd_throughput_variation_ratio")
        self.first_throttle = i("soakd_time_to_first_throttle_seconds")
        self.flop_per_joule = i("soakd_flop_per_joule")
        self.prepare = i("soakd_prepare_seconds")
        self.warmup = i("soakd_warmup_seconds")
        self.rotations = i("soakd_rotations_total")
        self.rotation_duration = i("soakd_rotation_duration_seconds", buckets=ROTATION_BUCKETS)
        self.rotation_active = i("soakd_rotation_active")
        self.last_rotation_end = i("soakd_last_rotation_end_timestamp_seconds")
        self.micro_runs = i("soakd_micro_runs_total")
        self.micro_seconds = i("soakd_micro_seconds")
        self.micro_flops = i("soakd_micro_flop_per_second")
        self.micro_bytes = i("soakd_micro_bytes_per_second")
        self.trackers: dict[Key, StabilityTracker] = {}
        self.active_keys: set[Key] = set()
        self.worker_memory: dict[str, int] = {}
        for result in ("completed", "stopped", "failed", "skipped"):
            self.rotations.labels(result=result)  # exported as 0 from the start

    # --- phases -------------------------------------------------------------------------------

    def begin_phase(self) -> None:
        """A new phase starts: stability is measured per phase run."""
        with self._lock:
            self.trackers.clear()

    def tracker(self, key: Key) -> StabilityTracker:
        if key not in self.trackers:
            self.trackers[key] = StabilityTracker(phase_started_wall=self._now())
        return self.trackers[key]

    def note_throttle(self) -> None:
        """A throttle event happened now: every active key's first throttle is now (if none yet)."""
        with self._lock:
            for key in self.active_keys:
                self.tracker(key).note_throttle(self._now())

    def add_slice_energy(self, key: Key, components: dict[str, float]) -> None:
        with self._lock:
            tracker = self.tracker(key)
            tracker.add_energy(system_energy(components))
            value = tracker.flop_per_joule()
            if value is not None:
                self.flop_per_joule.labels(*key).set(value)

    # --- events -------------------------------------------------------------------------------

    def handle(self, key: Key, event: dict[str, Any], flop_per_step: int) -> None:
        kind = event.get("type")
        labels = key
        with self._lock:
            if kind == "slice_start":
                self.active.labels(*labels).set(1)
                self.active_keys.add(key)
                self.tracker(key)
            elif kind == "slice_end":
                self.active.labels(*labels).set(0)
                self.active_keys.discard(key)
            elif kind == "prepared":
                self.prepare.labels(*labels).set(float(event.get("prepare_seconds", 0.0)))
            elif kind == "warmup":
                self.warmup.labels(*labels).set(float(event["seconds"]))
            elif kind == "steps":
                self._steps(key, event, flop_per_step)
            elif kind == "check":
                self.checks.labels(*labels).inc()
                error = float(event["relative_error"])
                self.relative_error.labels(*labels).set(error if error < float("inf") else 1e308)
                if not event["ok"]:
                    self.mismatches.labels(*labels).inc()
                else:
                    self.mismatches.labels(*labels)  # present as 0
            elif kind == "failure":
                self.failures.labels(*labels, str(event["reason"])).inc()
            elif kind == "fallback":
                self.fallbacks.labels(phase=key[0], backend=str(event["from"]),
                                      to_backend=str(event["to"]) or "none",
                                      reason=str(event["reason"])).inc()

    def _steps(self, key: Key, event: dict[str, Any], flop_per_step: int) -> None:
        durations = event["durations"]
        count = len(durations)
        self.steps.labels(*key).inc(count)
        self.flop.labels(*key).inc(count * flop_per_step)
        histogram = self.step_duration.labels(*key)
        for duration in durations:
            histogram.observe(duration)
        self.mismatches.labels(*key)
        tracker = self.tracker(key)
        tracker.add(float(event["seconds"]), float(count * flop_per_step))
        for gauge, value in ((self.throughput, tracker.throughput()),
                             (self.sustained, tracker.sustained_ratio()),
                             (self.variation, tracker.variation())):
            if value is not None:
                gauge.labels(*key).set(value)
        seconds, throttled = tracker.time_to_first_throttle(self._now())
        # the other series goes away once the phase has throttled
        self.first_throttle.labels(*key, "true" if throttled else "false").set(seconds)
        if throttled:
            with contextlib.suppress(KeyError):
                self.first_throttle.remove(*key, "false")
        memory = event.get("memory") or {}
        self.worker_memory = {("worker_rss" if k == "rss" else k): int(v) for k, v in memory.items()
                              if k in ("rss", "device_allocated", "device_reserved",
                                       "device_peak_allocated", "device_driver_allocated")}

    # --- rotations and micro-benchmarks -------------------------------------------------------

    def rotation_started(self, keys: list[Key]) -> None:
        """Create the planned series at 0, so the first scrape of a short phase already sees
        the counters start from zero and rate()/increase() count its steps."""
        self.rotation_active.set(1)
        with self._lock:
            for key in keys:
                for metric in (self.steps, self.flop, self.step_duration, self.checks, self.mismatches):
                    metric.labels(*key)

    def rotation_finished(self, result: str, seconds: float) -> None:
        self.rotation_active.set(0)
        self.rotations.labels(result=result).inc()
        if result != "skipped":
            self.rotation_duration.observe(seconds)
        self.last_rotation_end.set(self._now())
        with self._lock:
            for key in self.active_keys:
                self.active.labels(*key).set(0)
            self.active_keys.clear()

    def micro_results(self, rows: list[dict[str, Any]]) -> None:
        self.micro_runs.inc()
        for row in rows:
            labels = (str(row["backend"]), str(row["category"]), str(row["op"]), str(row["size"]))
            median = row.get("median_seconds")
            if median is not None:
                self.micro_seconds.labels(*labels).set(float(median))
            if row.get("gflops") is not None:
                self.micro_flops.labels(*labels).set(float(row["gflops"]) * 1e9)
            if row.get("gb_per_s") is not None:
                self.micro_bytes.labels(*labels).set(float(row["gb_per_s"]) * 1e9)
