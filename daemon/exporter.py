"""Prometheus exposition: workload instruments updated live, telemetry read from a cache.

`WorkloadMetrics` turns the worker's events into counters, the step-latency histogram and
summary (daemon/latency.py) and the stability gauges. `SnapshotCollector`
(daemon/telemetry_exporter.py, re-exported here) is a custom Collector that reads the sampler's
last snapshot at scrape time, so a scrape never touches hardware.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.latency import StepLatency
from daemon.metric_catalog import BY_NAME, MetricDef
from daemon.records import ConditionsRow
from daemon.stability import StabilityTracker, window_for
from daemon.telemetry_exporter import SnapshotCollector
from daemon.verdicts import DeviceVerdict
from workloads.micro.results import MicroResult
from workloads.placement import ane_share
from workloads.protocol import Check, Failure, Prepared, RunConfig, Steps, Warmup
from workloads.rotation import (
    FallbackTaken,
    RotationEvent,
    SliceContext,
    SliceEnded,
    SliceStarted,
)

if TYPE_CHECKING:
    from daemon.phase_verdicts import SeriesVerdict

__all__ = ["SnapshotCollector", "WorkloadMetrics", "series_key"]

# For counting steps; quantiles come from soakd_step_latency_seconds (daemon/latency.py). Up to
# 600 s: heavy CPU steps take 30-70 s.
STEP_BUCKETS = (2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0, 300.0, 600.0)
ROTATION_BUCKETS = (1, 5, 15, 30, 60, 300, 600, 1200, 1800, 3600, 5400, 7200, 14400)
Key = tuple[str, str, str, str]  # phase, backend, precision, device


def _base(metric: MetricDef) -> str:
    """prometheus_client adds `_total` to counters itself."""
    return metric.name[: -len("_total")] if metric.kind == "counter" else metric.name


def _instrument(registry: CollectorRegistry, name: str, **kwargs: Any) -> Any:
    metric = BY_NAME[name]
    kinds: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    return kinds[metric.kind](_base(metric), metric.help, list(metric.labels), registry=registry,
                              **kwargs)


class WorkloadMetrics:
    """Live workload instruments; `handle()` takes the rotation's typed events.

    Every figure about a slice comes from that slice's own context (its spec, hence its FLOP
    per step), never from the live configuration, so a reload mid-rotation changes nothing
    already running. Stability trackers are kept per series and run configuration: slices
    that ran differently are never pooled.

    Every instrument is registered in `registry` (names, labels and help from
    daemon/metric_catalog.py); `now` is the wall clock in seconds since the epoch (time.time),
    injectable for tests. The methods may be called from several threads (one lock).
    """

    def __init__(self, registry: CollectorRegistry, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        i = lambda name, **kw: _instrument(registry, name, **kw)  # noqa: E731
        self.steps = i("soakd_steps_total")
        self.flop = i("soakd_flop_total")
        self.step_duration = i("soakd_step_duration_seconds", buckets=STEP_BUCKETS)
        self.latency = StepLatency(registry)
        self.measured = i("soakd_measured_seconds_total")
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
        self.load_gap = i("soakd_load_gap_seconds_total")
        self.phase_seconds = i("soakd_phase_seconds_total")
        self.run_info = i("soakd_run_info")
        self.ane_ratio = i("soakd_compute_plan_ane_ratio")
        self.device_relative = i("soakd_device_relative_throughput_ratio")
        self.device_outlier = i("soakd_device_outlier")
        self.stability = i("soakd_stability_ratio")
        self.stability_passed = i("soakd_stability_passed")
        self.pass_mark = i("soakd_stability_pass_mark_ratio")
        self.slowdowns = i("soakd_slowdowns_total")
        self.sustained_rate = i("soakd_sustained_flop_per_second")
        self.history = i("soakd_history_flop_per_second")
        self.history_rotations = i("soakd_history_rotations")
        self.regression = i("soakd_throughput_regression")
        self.cooldown = i("soakd_cooldown_seconds")
        self.started_hot = i("soakd_rotation_started_hot")
        self.rotations = i("soakd_rotations_total")
        self.rotation_duration = i("soakd_rotation_duration_seconds", buckets=ROTATION_BUCKETS)
        self.rotation_active = i("soakd_rotation_active")
        self.plan_state = RotationPlanCollector()
        registry.register(self.plan_state)
        self.last_rotation_end = i("soakd_last_rotation_end_timestamp_seconds")
        self.micro_runs = i("soakd_micro_runs_total")
        self.micro_seconds = i("soakd_micro_seconds")
        self.micro_flops = i("soakd_micro_flop_per_second")
        self.micro_bytes = i("soakd_micro_bytes_per_second")
        self.trackers: dict[Key, StabilityTracker] = {}
        # Throttling is a phase-level fact (one host, one heat): the time to the first throttle
        # is counted from the phase's start for every series of the phase.
        self._phase_started: float | None = None
        self._first_throttle: float | None = None
        self._throttle_known = False
        self._throttle_active = False
        self._stability_window = window_for(0.0)
        self.runs: dict[Key, RunConfig] = {}
        self.active_keys: set[Key] = set()
        self.worker_memory: dict[str, int] = {}
        for result in ("completed", "stopped", "failed", "skipped", "interrupted"):
            self.rotations.labels(result=result)  # exported as 0 from the start

    # --- phases -------------------------------------------------------------------------------

    def begin_phase(self, planned_seconds: float = 0.0) -> None:
        """A new phase starts: stability is measured per phase run (windows sized for
        `planned_seconds`, daemon/stability.window_for), the time to the first throttle counts
        from now, and the last phase's (or rotation's) figures go away."""
        with self._lock:
            self.trackers.clear()
            self.latency.clear()
            self._stability_window = window_for(planned_seconds)
            self.first_throttle.clear()
            self._phase_started = self._now()
            self._first_throttle = self._phase_started if self._throttle_active else None

    def end_phase(self, keys: list[Key]) -> None:
        """A phase ended: its live gauges go away (a dashboard shows a gap, an alert stops)."""
        with self._lock:
            for key in keys:
                for gauge in (self.throughput, self.sustained, self.variation):
                    with contextlib.suppress(KeyError):
                        gauge.remove(*key)
                self.latency.forget(key)

    def tracker(self, key: Key) -> StabilityTracker:
        """The series' stability tracker in this phase (made on first use)."""
        if key not in self.trackers:
            self.trackers[key] = StabilityTracker(window=self._stability_window)
        return self.trackers[key]

    def throttle_state(self, active: bool, known: bool) -> None:
        """The host's throttle state now (daemon/throttle.py): any throttle reason active, and
        whether any source can see throttling at all. The first tick with one active during a
        phase is the phase's first throttle, whether it began then or was already on."""
        with self._lock:
            self._throttle_known, self._throttle_active = known, active
            if active and self._phase_started is not None and self._first_throttle is None:
                self._first_throttle = self._now()

    def add_slice_energy(self, key: Key, joules: float | None) -> None:
        """Whole-system joules used during a slice's measured time, for FLOP per joule."""
        with self._lock:
            tracker = self.tracker(key)
            tracker.add_energy(joules)
            value = tracker.flop_per_joule()
            if value is not None:
                self.flop_per_joule.labels(*key).set(value)

    # --- events -------------------------------------------------------------------------------

    def handle(self, context: SliceContext, event: RotationEvent) -> None:
        """Turn one rotation event of the slice in `context` into metric updates."""
        key = series_key(context)
        with self._lock:
            if isinstance(event, SliceStarted):
                self.active.labels(*key).set(1)
                self.active_keys.add(key)
                # running again: its rate and latency over its last measured seconds (earlier
                # slices of this phase) show from the start, not only after its first step
                throughput = self.tracker(key).throughput()
                if throughput is not None:
                    self.throughput.labels(*key).set(throughput)
                self.latency.show(key)
            elif isinstance(event, SliceEnded):
                self.active.labels(*key).set(0)
                self.active_keys.discard(key)
                # not running: no "throughput now" (a panel shows a gap, not a ramp or a stale value)
                with contextlib.suppress(KeyError):
                    self.throughput.remove(*key)
                self.latency.hide(key)
                turn = event.result.turn_ended - event.result.turn_started
                if turn == turn:  # not NaN: the turn was timed
                    self.load_gap.labels(*key).inc(event.result.gap_seconds)
                    self.phase_seconds.labels(*key).inc(max(0.0, turn))
            elif isinstance(event, Prepared):
                self.prepare.labels(*key).set(event.prepare_seconds)
                self._set_run(key, event.run)
                share = ane_share(event.info)
                if share is not None:
                    self.ane_ratio.labels(*key, event.run.variant).set(share)
            elif isinstance(event, Warmup):
                self.warmup.labels(*key).set(event.seconds)
                if event.run is not None:
                    self._set_run(key, event.run)
            elif isinstance(event, Steps):
                self._steps(key, event, context.flop_per_step)
            elif isinstance(event, Check):
                self.checks.labels(*key).inc()
                error = event.relative_error
                self.relative_error.labels(*key).set(error if error < float("inf") else 1e308)
                self.mismatches.labels(*key).inc(0 if event.ok else 1)
            elif isinstance(event, Failure):
                self.failures.labels(*key, event.reason).inc()
            elif isinstance(event, FallbackTaken):
                self.fallbacks.labels(phase=context.phase, backend=event.from_backend,
                                      to_backend=event.to_backend or "none", reason=event.reason).inc()

    def device_verdicts(self, phase: str, backend: str, precision: str,
                        verdicts: dict[str, DeviceVerdict]) -> None:
        """A phase's per-device verdicts (daemon/verdicts.py), keyed by device index: sets each
        device's throughput over the host's median device (a ratio) and its outlier flag (1/0)."""
        with self._lock:
            for device, verdict in verdicts.items():
                key = (phase, backend, precision, device)
                self.device_relative.labels(*key).set(verdict.relative)
                self.device_outlier.labels(*key).set(1 if verdict.outlier else 0)

    def series_verdict(self, verdict: SeriesVerdict) -> None:
        """A series' verdicts at its phase's end (daemon/phase_verdicts.py): stability score and
        pass, slowdowns counted by explained, sustained throughput against its history band. A
        figure this phase has none of goes away (no verdict of an earlier phase stays)."""
        key, score, band = verdict.labels, verdict.score, verdict.band
        with self._lock:
            self.pass_mark.set(score.pass_mark)
            _set_or_remove(self.stability, key, score.score)
            _set_or_remove(self.stability_passed, key, None if score.passed is None else float(score.passed))
            _set_or_remove(self.sustained_rate, key, verdict.sustained)
            for slowdown in verdict.slowdowns:
                self.slowdowns.labels(*key, "true" if slowdown.explained else "false").inc()
            for bound, value in (("low", band.low if band else None), ("median", band.median if band else None),
                                 ("high", band.high if band else None)):
                _set_or_remove(self.history, (*key, bound), value)
            self.history_rotations.labels(*key).set(band.rotations if band else 0)
            _set_or_remove(self.regression, key, None if verdict.regression is None else float(verdict.regression))

    def rotation_conditions(self, conditions: ConditionsRow) -> None:
        """What the rotation started under (daemon/conditions.py): its cool-down wait, hot or not."""
        self.cooldown.set(conditions.cooldown_seconds)
        self.started_hot.set(1 if conditions.started_hot else 0)

    def _set_first_throttle(self, key: Key) -> None:
        """Time from the phase's start to its first throttle (throttled="true"), or so far
        without one ("false", a lower bound); absent where no source can see throttling."""
        for throttled in ("true", "false"):
            with contextlib.suppress(KeyError):
                self.first_throttle.remove(*key, throttled)
        if not self._throttle_known or self._phase_started is None:
            return
        if self._first_throttle is not None:
            self.first_throttle.labels(*key, "true").set(max(0.0, self._first_throttle - self._phase_started))
        else:
            self.first_throttle.labels(*key, "false").set(max(0.0, self._now() - self._phase_started))

    def _set_run(self, key: Key, run: RunConfig) -> None:
        old = self.runs.get(key)
        if old == run:
            return
        if old is not None:
            with contextlib.suppress(KeyError):
                self.run_info.remove(*key, *_run_labels(old))
            self.trackers.pop(key, None)  # a new run configuration: stability starts over
            self.latency.forget(key)
        self.runs[key] = run
        self.run_info.labels(*key, *_run_labels(run)).set(1)

    def _steps(self, key: Key, event: Steps, flop_per_step: int) -> None:
        count = event.steps
        self.steps.labels(*key).inc(count)
        self.flop.labels(*key).inc(count * flop_per_step)
        self.measured.labels(*key).inc(max(0.0, event.seconds))
        histogram = self.step_duration.labels(*key)
        for duration in event.durations:
            histogram.observe(duration)
        self.latency.observe(key, event.durations, event.seconds)
        self.mismatches.labels(*key)
        tracker = self.tracker(key)
        tracker.add(event.seconds, float(count * flop_per_step))
        for gauge, value in ((self.throughput, tracker.throughput()),
                             (self.sustained, tracker.sustained_ratio()),
                             (self.variation, tracker.variation())):
            if value is not None:
                gauge.labels(*key).set(value)
        self._set_first_throttle(key)
        memory = event.memory
        self.worker_memory = {"worker_rss": memory.rss, "worker_peak_rss": memory.peak_rss,
                              **memory.device_gauges()}

    # --- rotations and micro-benchmarks -------------------------------------------------------

    def rotation_started(self, keys: list[Key]) -> None:
        """Create the planned series at 0, so the first scrape of a short phase already sees
        the counters start from zero and rate()/increase() count its steps."""
        self.rotation_active.set(1)
        with self._lock:
            for key in keys:
                for metric in (self.steps, self.flop, self.measured, self.step_duration, self.checks,
                               self.mismatches, self.load_gap, self.phase_seconds):
                    metric.labels(*key)
                for explained in ("true", "false"):  # increase() sees the first slowdown
                    self.slowdowns.labels(*key, explained)

    def rotation_progress(self, ratio: float | None, remaining_s: float | None) -> None:
        """Where the running rotation is; None (between rotations) removes the gauges."""
        self.plan_state.values.update(progress=ratio, remaining=remaining_s)

    def rotation_plan(self, estimate_s: float, interval_s: float | None, fits: bool | None) -> None:
        """The chosen profile's estimated rotation time against the schedule's interval."""
        self.plan_state.values.update(estimate=estimate_s, interval=interval_s,
                                      fits_estimate=None if fits is None else float(fits))

    def rotation_measured(self, seconds: float, interval_s: float | None) -> None:
        """The last rotation's wall time against the interval."""
        if interval_s is not None:
            self.plan_state.values["fits_measured"] = float(seconds <= interval_s)

    def rotation_finished(self, result: str, seconds: float) -> None:
        """A rotation ended with `result` (completed, stopped, failed, skipped or interrupted)
        after `seconds` of wall time; a skipped rotation is counted but not timed. Every series
        stops being active and the worker memory figures are cleared."""
        self.rotation_active.set(0)
        self.rotations.labels(result=result).inc()
        if result != "skipped":
            self.rotation_duration.observe(seconds)
        self.last_rotation_end.set(self._now())
        self.rotation_progress(None, None)
        with self._lock:
            for key in self.active_keys:  # a slice cut short without its end event
                self.active.labels(*key).set(0)
                with contextlib.suppress(KeyError):
                    self.throughput.remove(*key)
                self.latency.hide(key)
            self.active_keys.clear()
            self.worker_memory = {}  # no worker runs between rotations

    def micro_results(self, results: list[MicroResult]) -> None:
        """One micro-benchmark suite run's results: per backend, category, op and size, the
        median time in seconds and, where the op has them, FLOP/s and bytes/s (from the
        results' GFLOP/s and GB/s, times 1e9)."""
        self.micro_runs.inc()
        for row in results:
            labels = (row.backend, row.category, row.op, row.size)
            self.micro_seconds.labels(*labels).set(row.median_s)
            if row.gflops is not None:
                self.micro_flops.labels(*labels).set(row.gflops * 1e9)
            if row.gb_per_s is not None:
                self.micro_bytes.labels(*labels).set(row.gb_per_s * 1e9)


class RotationPlanCollector(Collector):
    """The rotation's progress and its fit to the interval, each present only while known."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}

    def collect(self) -> Iterator[Metric]:
        """The gauges whose values are set now."""
        values = dict(self.values)
        for key, name in (("progress", "soakd_rotation_progress_ratio"),
                          ("remaining", "soakd_rotation_remaining_seconds"),
                          ("estimate", "soakd_rotation_estimated_seconds"),
                          ("interval", "soakd_rotation_interval_seconds")):
            if values.get(key) is not None:
                yield GaugeMetricFamily(name, BY_NAME[name].help, value=values[key])
        fits = GaugeMetricFamily("soakd_rotation_fits_interval", BY_NAME["soakd_rotation_fits_interval"].help,
                                 labels=["basis"])
        for basis in ("estimate", "measured"):
            value = values.get(f"fits_{basis}")
            if value is not None:
                fits.add_metric([basis], value)
        yield fits


def _set_or_remove(gauge: Any, labels: tuple[str, ...], value: float | None) -> None:
    """Set the labelled gauge to `value`, or remove that series when `value` is None."""
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)


def series_key(context: SliceContext) -> Key:
    """The workload series a slice belongs to: (phase, backend, precision, device)."""
    return (context.phase, context.backend, context.precision, context.device)


def _run_labels(run: RunConfig) -> tuple[str, ...]:
    return (run.key, run.shapes, run.technique, run.memory_format, run.variant,
            "true" if run.tf32 else "false")
