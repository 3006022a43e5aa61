"""Every metric soakd exports: name, type, labels and help text.

The exporter builds its families from this table, the README's metric list is written from
it, and the dashboard tests check that every panel only uses names and labels listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKLOAD = ("phase", "backend", "precision")


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram | info
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDef, ...] = (
    # Workload, updated live from the worker's step events.
    MetricDef("soakd_steps_total", "counter", WORKLOAD, "Completed workload steps."),
    MetricDef("soakd_flop_total", "counter", WORKLOAD,
              "Floating-point operations done, from the phase's analytic FLOP count per step."),
    MetricDef("soakd_step_duration_seconds", "histogram", WORKLOAD,
              "Per-step latency, device-synchronised at step boundaries."),
    MetricDef("soakd_step_failures_total", "counter", (*WORKLOAD, "reason"),
              "Failed slices or steps, by reason."),
    MetricDef("soakd_fallbacks_total", "counter", ("phase", "backend", "to_backend", "reason"),
              "A phase moved from backend to to_backend along the fallback chain."),
    MetricDef("soakd_numeric_checks_total", "counter", WORKLOAD,
              "Output comparisons with the CPU float64 reference."),
    MetricDef("soakd_numeric_mismatches_total", "counter", WORKLOAD,
              "Outputs off the float64 reference by more than the precision's tolerance."),
    MetricDef("soakd_numeric_relative_error", "gauge", WORKLOAD,
              "Last norm-wise relative error against the float64 reference."),
    MetricDef("soakd_phase_active", "gauge", WORKLOAD, "1 while a slice of this phase/backend runs."),
    MetricDef("soakd_throughput_flop_per_second", "gauge", WORKLOAD,
              "Throughput over the last 10 s of measured steps."),
    MetricDef("soakd_sustained_ratio", "gauge", WORKLOAD,
              "Recent throughput (last 60 s) over the throughput in the phase's first minute "
              "after warm-up (0-1 when it sags)."),
    MetricDef("soakd_throughput_variation_ratio", "gauge", WORKLOAD,
              "Rolling coefficient of variation (stddev/mean) of throughput over ~0.25 s segments, "
              "last 60 s of measured time."),
    MetricDef("soakd_time_to_first_throttle_seconds", "gauge", (*WORKLOAD, "throttled"),
              "Seconds from the phase's start to its first throttle event (throttled=true), or "
              "seconds run so far without one (throttled=false, a lower bound)."),
    MetricDef("soakd_flop_per_joule", "gauge", WORKLOAD,
              "FLOP per joule of whole-system energy over the phase so far (energy from cumulative "
              "counters; absent without an energy source)."),
    MetricDef("soakd_prepare_seconds", "gauge", WORKLOAD,
              "Last slice's preparation time (model build, reference, Core ML load), not in throughput."),
    MetricDef("soakd_warmup_seconds", "gauge", WORKLOAD,
              "Last slice's warm-up time, excluded from throughput."),
    # Telemetry, read from the sampler's snapshot at scrape time.
    MetricDef("soakd_energy_joules_total", "counter", ("source", "component"),
              "Energy from cumulative hardware counters since the daemon started."),
    MetricDef("soakd_power_watts", "gauge", ("source", "component"),
              "Power from energy-counter deltas over the last sampling interval."),
    MetricDef("soakd_thermal_pressure", "gauge", ("level",),
              "Thermal pressure state set: 1 for the current level, 0 for the others."),
    MetricDef("soakd_thermal_pressure_level", "gauge", (),
              "Thermal pressure as an ordinal: 0 nominal, 1 light, 2 moderate, 3 heavy, "
              "4 trapping, 5 sleeping."),
    MetricDef("soakd_thermal_pressure_seconds_total", "counter", ("level",),
              "Seconds spent at each thermal pressure level."),
    MetricDef("soakd_temperature_celsius", "gauge", ("source", "sensor"), "Temperatures."),
    MetricDef("soakd_throttle_events_total", "counter", ("source", "reason"),
              "Throttle events: a clock-event reason or a thermal pressure level becoming active."),
    MetricDef("soakd_clock_hertz", "gauge", ("source", "domain"), "Clock frequencies."),
    MetricDef("soakd_memory_bytes", "gauge", ("kind",),
              "Memory: daemon rss, worker rss, system used/available, swap used, device allocator."),
    MetricDef("soakd_source_up", "gauge", ("source",), "1 if the telemetry source's last read worked."),
    MetricDef("soakd_source_errors_total", "counter", ("source",), "Failed reads per telemetry source."),
    MetricDef("soakd_source_read_duration_seconds", "gauge", ("source",),
              "How long the source's last read took."),
    # Daemon.
    MetricDef("soakd_rotations_total", "counter", ("result",),
              "Rotations finished, by result: completed, stopped, failed, skipped; interrupted "
              "(found open at start after a crash, counted once by the next run)."),
    MetricDef("soakd_rotation_duration_seconds", "histogram", (), "Wall time of a rotation."),
    MetricDef("soakd_rotation_active", "gauge", (), "1 while a rotation runs."),
    MetricDef("soakd_last_rotation_end_timestamp_seconds", "gauge", (),
              "Unix time the last rotation ended."),
    MetricDef("soakd_next_rotation_timestamp_seconds", "gauge", (),
              "Unix time the next scheduled rotation starts."),
    MetricDef("soakd_journal_errors_total", "counter", (),
              "Failed journal writes (locked by another process, disk full, I/O error); the rows are "
              "kept in memory and written in order when writing works again."),
    MetricDef("soakd_journal_pending_rows", "gauge", (),
              "Journal rows held in memory because writing failed (at most 10,000)."),
    MetricDef("soakd_journal_dropped_rows_total", "counter", (),
              "Journal rows given up: the in-memory queue was full, or SQLite refused the row."),
    MetricDef("soakd_micro_runs_total", "counter", (), "Micro-benchmark suite runs."),
    MetricDef("soakd_micro_seconds", "gauge", ("backend", "category", "op", "size"),
              "Median time of one micro-benchmark operation."),
    MetricDef("soakd_micro_flop_per_second", "gauge", ("backend", "category", "op", "size"),
              "Micro-benchmark compute rate."),
    MetricDef("soakd_micro_bytes_per_second", "gauge", ("backend", "category", "op", "size"),
              "Micro-benchmark memory bandwidth."),
    MetricDef("soakd_info", "info", ("chip", "machine", "os", "os_version", "python", "torch",
                                     "coremltools", "version"),
              "Host chip, OS and library versions."),
)

BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}


def exposed_names(metric: MetricDef) -> list[str]:
    """Sample names that appear in a scrape for this metric."""
    if metric.kind == "counter":
        return [metric.name] if metric.name.endswith("_total") else [f"{metric.name}_total"]
    if metric.kind == "histogram":
        return [f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"]
    return [metric.name]
