"""Every metric soakd exports: name, type, labels and help text.

The exporter builds its families from this table, the README's metric list is written from
it, and the dashboard tests check that every panel only uses names and labels listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.levels import LEVELS

# A workload series: one phase on one backend (where it really ran), precision and device
# (the device's index within its backend: "0" on a one-GPU host, "0" for the CPU).
WORKLOAD = ("phase", "backend", "precision", "device")
RUN_CONFIG = ("run_key", "shapes", "technique", "memory_format", "variant", "tf32")


@dataclass(frozen=True)
class MetricDef:
    """One exported metric: `name` as declared (a counter's `_total` included, in base units),
    `kind` (counter, gauge, histogram or info), its label names in order, and its help text."""

    name: str
    kind: str  # counter | gauge | histogram | summary | info
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDef, ...] = (
    # Workload, updated live from the worker's step events.
    MetricDef("soakd_steps_total", "counter", WORKLOAD, "Completed workload steps."),
    MetricDef("soakd_flop_total", "counter", WORKLOAD,
              "Floating-point operations done, from the phase's analytic FLOP count per step."),
    MetricDef("soakd_step_duration_seconds", "histogram", WORKLOAD,
              "Per-step latency, each observation one step timed on its own (device events or a "
              "synchronised clock at its boundaries). Steps under 1 ms on CUDA run in timed groups "
              "for throughput; their latencies are a 1-in-16 sample of groups timed step by step, "
              "so _count can be below soakd_steps_total and _sum below the measured time "
              "(soakd_measured_seconds_total). The buckets (20 µs to 600 s) are for counting: "
              "histogram_quantile() interpolates inside a bucket and can be off by its width; "
              "p50/p99 are soakd_step_latency_seconds."),
    MetricDef("soakd_step_latency_seconds", "summary", WORKLOAD,
              "Step latency quantiles (0.5, 0.9, 0.99; 1 is the max) of the series' steps in its "
              "last 60-65 s of measured time (its own steps, not wall time), from 1 % log buckets: "
              "within ~0.5 % of the exact quantiles. Present only while a slice of the series runs; "
              "no _sum/_count (the histogram soakd_step_duration_seconds has them)."),
    MetricDef("soakd_measured_seconds_total", "counter", WORKLOAD,
              "Seconds of the series' measured steps (device-synchronised segment time, all steps "
              "even where latencies are sampled): what throughput divides by, so "
              "increase(soakd_flop_total) / increase(soakd_measured_seconds_total) is the exact "
              "mean FLOP/s of the steps in a range."),
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
              "Throughput over the last 10 s of the series' measured steps; present only while a slice "
              "of the series runs (a gap while another backend's slice runs, or no work does)."),
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
              "FLOP per joule over the series' measured time in the phase so far: FLOP of the measured "
              "steps over the whole-system energy (soakd_system_energy_joules_total's components) "
              "used during those steps only, not during start-up, warm-up or hand-over. Absent "
              "without an energy source, and when several series run at once (concurrent mode, "
              "several GPUs): their shared energy is not split between them."),
    MetricDef("soakd_prepare_seconds", "gauge", WORKLOAD,
              "Last worker's preparation time (model build, reference, Core ML load), not in throughput."),
    MetricDef("soakd_load_gap_seconds_total", "counter", WORKLOAD,
              "Seconds of this series' slice turns with no measured step running: hand-over at "
              "slice boundaries, warm-up and preparation inside the phase, reference checks. "
              "Preparation done ahead (before the first phase, or during the previous phase) is "
              "not counted."),
    MetricDef("soakd_phase_seconds_total", "counter", WORKLOAD,
              "Wall seconds of this series' slice turns within phases (measured time plus load gap); "
              "1 - rate(load_gap)/rate(phase_seconds) is the duty cycle."),
    MetricDef("soakd_compute_plan_ane_ratio", "gauge", (*WORKLOAD, "variant"),
              "Core ML's estimated share (0-1) of the model's cost placed on the Neural Engine, from "
              "MLComputePlan (macOS 14.4+): an estimate before running, not a measurement; absent "
              "where no compute plan is available."),
    MetricDef("soakd_device_relative_throughput_ratio", "gauge", WORKLOAD,
              "A device's sustained throughput in its last phase (second half of its slices) over the "
              "host's median device of the same backend and precision; only on hosts with several "
              "devices."),
    MetricDef("soakd_device_outlier", "gauge", WORKLOAD,
              "1 when the device's relative throughput in its last phase was below the outlier ratio "
              "(default 0.95), else 0; only on hosts with several devices."),
    # Verdicts (daemon/verdicts.py), set when the series' phase ends.
    MetricDef("soakd_stability_ratio", "gauge", WORKLOAD,
              "Stability score of the series' last phase: its worst loop's throughput over its best "
              "(3DMark's loop stability; a loop is one slice, its FLOP over its measured seconds); absent "
              "with fewer than two loops."),
    MetricDef("soakd_stability_passed", "gauge", WORKLOAD,
              "1 when the stability score reached the pass mark (soakd_stability_pass_mark_ratio), else 0."),
    MetricDef("soakd_stability_pass_mark_ratio", "gauge", (),
              "The stability score that passes (verdicts.pass_mark, default 0.97: 3DMark's)."),
    MetricDef("soakd_slowdowns_total", "counter", (*WORKLOAD, "explained"),
              "Loops at least verdicts.slowdown_threshold (default 5 %) below the phase's warm level "
              "(median of its first two loops). explained=true: the telemetry changed with it (a "
              "throttle reason appeared or grew, thermal pressure rose, the clock fell by at least half "
              "the drop, power moved relative to its cap); explained=false: nothing did. Each is in the "
              "journal (event slowdown) with its readings."),
    MetricDef("soakd_sustained_flop_per_second", "gauge", WORKLOAD,
              "The series' sustained throughput in its last phase: FLOP over measured seconds of the "
              "second half of its loops (the first half holds the warm-up transient)."),
    MetricDef("soakd_history_flop_per_second", "gauge", (*WORKLOAD, "bound"),
              "Sustained throughput of the earlier rotations of the same run configuration (run_key and "
              "profile), last verdicts.history_rotations (default 20): bound=low the 2.5th percentile, "
              "median, high the 97.5th; absent with fewer than 5 earlier rotations."),
    MetricDef("soakd_history_rotations", "gauge", WORKLOAD,
              "How many earlier rotations the history band of the series was made of."),
    MetricDef("soakd_throughput_regression", "gauge", WORKLOAD,
              "1 when the series' sustained throughput fell below its history band (bound=low), else 0; "
              "absent without a band."),
    MetricDef("soakd_run_info", "gauge", (*WORKLOAD, *RUN_CONFIG),
              "How the series' slices run now (1): shapes, technique (eager, cuda_graph, coreml), "
              "memory format, model variant, TF32, and run_key, a digest of all of them. Figures "
              "of different run_keys are never pooled by soakd."),
    MetricDef("soakd_warmup_seconds", "gauge", WORKLOAD,
              "Last slice's warm-up time, excluded from throughput."),
    # Telemetry, read from the sampler's snapshot at scrape time.
    MetricDef("soakd_energy_joules_total", "counter", ("source", "component"),
              "Energy from cumulative hardware counters since the daemon started, per component "
              "(totals and their parts both appear: see soakd_system_energy_joules_total)."),
    MetricDef("soakd_power_watts", "gauge", ("source", "component", "method"),
              "Power per component. method=counter: energy-counter delta over the last sampling interval "
              "(or powermetrics' measured window); method=instantaneous: the device's instantaneous power "
              "reading, an estimate used only where no energy counter exists (NVML GPUs before Volta)."),
    MetricDef("soakd_system_energy_joules_total", "counter", (),
              "Whole-system energy since the daemon started, without counting a rail twice: only the "
              "outermost totals present on this machine (RAPL psys contains package and dram, a package its "
              "core/uncore; powermetrics combined contains cpu, gpu, ane), decided at read time; a total "
              "reading 0 while its parts read more is replaced by its parts."),
    MetricDef("soakd_energy_counted", "gauge", ("source", "component"),
              "1 if the component counts toward soakd_system_energy_joules_total, 0 if it lies inside "
              "another component that does."),
    MetricDef("soakd_energy_counter_resets_total", "counter", ("source", "component"),
              "Energy counters that went back and were judged a reset (a wrap would imply an implausible "
              "power for the interval): nothing was added for that interval."),
    MetricDef("soakd_source_gap_seconds_total", "counter", ("source",),
              "Seconds a source could not measure (a restarted powermetrics child): no energy is counted "
              "for them."),
    MetricDef("soakd_power_limit_watts", "gauge", ("source", "device"),
              "The power limit the device enforces now (NVML enforced power limit)."),
    MetricDef("soakd_thermal_pressure", "gauge", ("level",),
              "Thermal pressure state set: 1 for the current level, 0 for the others."),
    MetricDef("soakd_thermal_pressure_level", "gauge", (),
              "Thermal pressure as an ordinal: " + ", ".join(f"{i} {name}" for i, name in enumerate(LEVELS)) + "."),
    MetricDef("soakd_thermal_pressure_seconds_total", "counter", ("level",),
              "Seconds spent at each thermal pressure level."),
    MetricDef("soakd_temperature_celsius", "gauge", ("source", "sensor"), "Temperatures."),
    MetricDef("soakd_throttle_events_total", "counter", ("source", "reason"),
              "Throttles starting: an NVML throttle reason turning on (sw_power_cap, hw_slowdown, "
              "sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown; not gpu_idle, "
              "applications_clocks_setting, sync_boost, display_clock_setting), macOS thermal pressure "
              "rising to moderate or above (reason thermal_pressure), a macOS CPU speed limit dropping "
              "below 100 (cpu_speed_limit)."),
    MetricDef("soakd_throttle_active", "gauge", ("source", "reason"),
              "1 while the throttle reason is active, 0 once it has ended (same reasons as "
              "soakd_throttle_events_total)."),
    MetricDef("soakd_throttled_seconds_total", "counter", ("source", "reason"),
              "Seconds spent throttled, per reason (sample-and-hold at the sampling interval)."),
    MetricDef("soakd_throttle_observable", "gauge", (),
              "1 if some telemetry source can see throttling on this host now (NVML clock-event reasons, a "
              "macOS thermal pressure level, pmset's CPU speed limit); 0: throttling is unknown here, so "
              "no throttle events means unknown, not none."),
    MetricDef("soakd_clock_hertz", "gauge", ("source", "domain"), "Clock frequencies."),
    MetricDef("soakd_memory_bytes", "gauge", ("kind",),
              "Memory: daemon rss, worker rss, system used/available, swap used, device allocator."),
    MetricDef("soakd_source_up", "gauge", ("source",), "1 if the telemetry source's last read worked."),
    MetricDef("soakd_source_errors_total", "counter", ("source",), "Failed reads per telemetry source."),
    MetricDef("soakd_source_read_duration_seconds", "gauge", ("source",),
              "How long the source's last read took."),
    MetricDef("soakd_device_up", "gauge", ("source", "device"),
              "1 if the device (a GPU, a RAPL zone) was read at the last tick; 0 when it is down "
              "(handle not opened, GPU lost, zone unreadable): the reason is in the journal and the log."),
    MetricDef("soakd_reading_unavailable", "gauge", ("source", "device", "reading", "reason"),
              "1 for each reading a device cannot give and that is skipped from now on (reason: "
              "not_supported, function_not_found, permission_denied, ...): absent, not zero."),
    MetricDef("soakd_reading_errors_total", "counter", ("source", "device", "reading", "reason"),
              "Readings of one device dropped for one tick (or skipped from then on), by reason; the "
              "other readings and devices were still read."),
    MetricDef("soakd_hardware_errors_total", "counter", ("source", "device", "kind"),
              "Hardware errors as the device counts them: xid (XID critical errors since soakd started), "
              "ecc_corrected_volatile / ecc_uncorrected_volatile (since the driver loaded), pcie_replay, "
              "remapped_rows_correctable / remapped_rows_uncorrectable. Absent where unsupported (see "
              "soakd_reading_unavailable)."),
    MetricDef("soakd_hardware_condition", "gauge", ("source", "device", "condition"),
              "1 while a device condition holds: row_remap_pending (a row remapping waits for a GPU "
              "reset), row_remap_failure (a remapping failed: service the GPU)."),
    # Daemon.
    MetricDef("soakd_rotations_total", "counter", ("result",),
              "Rotations finished, by result: completed, stopped, failed, skipped; interrupted "
              "(found open at start after a crash, counted once by the next run)."),
    MetricDef("soakd_rotation_duration_seconds", "histogram", (), "Wall time of a rotation."),
    MetricDef("soakd_rotation_active", "gauge", (), "1 while a rotation runs."),
    MetricDef("soakd_rotation_progress_ratio", "gauge", (),
              "How far the running rotation is (0-1): planned phase time done over planned phase time; "
              "absent between rotations."),
    MetricDef("soakd_rotation_remaining_seconds", "gauge", (),
              "Estimated time left in the running rotation (its planned phase time left); absent "
              "between rotations."),
    MetricDef("soakd_rotation_estimated_seconds", "gauge", (),
              "A rotation's planned wall time (phases, CPU baselines to measure, ~60 s of probe, "
              "preparation and hand-overs) for the profile the daemon runs."),
    MetricDef("soakd_rotation_interval_seconds", "gauge", (),
              "Seconds between two scheduled rotations (absent for a cron schedule without a fixed gap)."),
    MetricDef("soakd_rotation_fits_interval", "gauge", ("basis",),
              "1 when a rotation fits its interval, 0 when not: basis=\"estimate\" from the plan, "
              "basis=\"measured\" from the last rotation's wall time."),
    MetricDef("soakd_last_rotation_end_timestamp_seconds", "gauge", (),
              "Unix time the last rotation ended."),
    MetricDef("soakd_cooldown_seconds", "gauge", (),
              "How long the last rotation waited for the devices to cool to their idle temperature "
              "before it started (cooldown.max_wait_seconds; 0 when off); not part of its phases' time."),
    MetricDef("soakd_rotation_started_hot", "gauge", (),
              "1 when a sensor was still above its idle temperature plus cooldown.margin_celsius as the "
              "last rotation started, else 0 (also 0 without an idle temperature to compare with: `soakd "
              "status` and the journal's conditions say which)."),
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
    # soakd's summaries carry quantiles only (their _sum/_count would repeat a histogram's)
    return [metric.name]
